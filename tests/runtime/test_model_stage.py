"""Staged forward of our Llama-family model vs the transformers implementation (random weights).

Each tiny config is built by transformers with a fixed seed and saved as an HF directory; our
stages load it through `prepare_model` / `load_stage_weights`, split in several ways, and must give
the full transformers model's logits for prefill, chunked prefill, decode and batched decode of
sequences of different lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    GptOssConfig,
    GptOssForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from e2llm.errors import InputError
from e2llm.runtime.engine import LocalPipeline, handoff, load_stage
from e2llm.runtime.model import StageModel
from e2llm.runtime.sampling import SamplingParams
from e2llm.runtime.weights import ModelSource, PreparedModel, load_stage_weights, prepare_model

SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=101,
    max_position_embeddings=128,
    initializer_range=0.2,  # large enough that logits differ clearly between tokens
)
ModelFactory = Callable[[], tuple[PretrainedConfig, type[PreTrainedModel]]]
CONFIGS: dict[str, ModelFactory] = {
    "llama": lambda: (LlamaConfig(num_hidden_layers=4, **SHAPE), LlamaForCausalLM),
    "qwen2": lambda: (Qwen2Config(num_hidden_layers=4, **SHAPE), Qwen2ForCausalLM),
    "mistral-window": lambda: (
        MistralConfig(num_hidden_layers=3, sliding_window=5, **SHAPE),
        MistralForCausalLM,
    ),
    # GPT-OSS: top-2 of 4 experts with biases and the clamped GLU, sliding (window 5) and full
    # attention alternating, attention sinks, YaRN rope
    "gpt-oss": lambda: (
        GptOssConfig(
            num_hidden_layers=4,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=5,
            head_dim=16,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 32,
            },
            **SHAPE,
        ),
        GptOssForCausalLM,
    ),
    "mixtral": lambda: (
        MixtralConfig(num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=2, **SHAPE),
        MixtralForCausalLM,
    ),
    "llama3-rope-tied": lambda: (
        LlamaConfig(
            num_hidden_layers=3,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            **SHAPE,
        ),
        LlamaForCausalLM,
    ),
}
TOL = dict(atol=1e-4, rtol=1e-4)
# CUDA runs the same checks where present (fp32; the reference stays on the CPU).
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(transformers model, our prepared copy of the same weights)."""
    cfg, cls = CONFIGS[request.param]()
    torch.manual_seed(0)
    hf = cls(cfg).eval()
    path: Path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, prepare_model(ModelSource.from_path(path))


def reference_logits(hf: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def splits_of(n: int) -> list[list[tuple[int, int]]]:
    return [[(0, n)], [(0, 1), (1, n)], [(0, 1), (1, n - 1), (n - 1, n)]]


def make_ids(seed: int, n: int, vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=gen).tolist()


def test_prefill_chunked_prefill_and_decode_match_transformers(
    tiny: tuple[PreTrainedModel, PreparedModel],
) -> None:
    hf, prepared = tiny
    ids = make_ids(1, 14, prepared.config.vocab)
    ref = reference_logits(hf, ids)
    for splits in splits_of(prepared.config.n_layers):
        pipe = LocalPipeline.build(prepared, splits)
        torch.testing.assert_close(pipe.prefill("s", ids[:7]), ref[6], **TOL)
        torch.testing.assert_close(pipe.prefill("s", ids[7:10]), ref[9], **TOL)  # continues at position 7
        for t in range(10, 14):
            torch.testing.assert_close(pipe.decode(["s"], [ids[t]])[0], ref[t], **TOL)
        assert all(stage.seq_len("s") == 14 for stage in pipe.stages)


def test_chunks_longer_than_the_window_match_transformers(
    tiny: tuple[PreTrainedModel, PreparedModel],
) -> None:
    """A chunk longer than a sliding layer's window, starting mid-sequence, sees the ring's older
    positions and its own under the window; decode then reads the ring as the chunk left it."""
    hf, prepared = tiny
    ids = make_ids(10, 24, prepared.config.vocab)
    ref = reference_logits(hf, ids)
    for splits in splits_of(prepared.config.n_layers)[::2]:
        pipe = LocalPipeline.build(prepared, splits)
        torch.testing.assert_close(pipe.prefill("s", ids[:3]), ref[2], **TOL)
        torch.testing.assert_close(pipe.prefill("s", ids[3:15]), ref[14], **TOL)  # 12 > window 5
        torch.testing.assert_close(pipe.prefill("s", ids[15:16]), ref[15], **TOL)  # a 1-token chunk
        for t in range(16, 24):
            torch.testing.assert_close(pipe.decode(["s"], [ids[t]])[0], ref[t], **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["ascending", "reversed"])
def test_batched_decode_of_different_lengths(
    tiny: tuple[PreTrainedModel, PreparedModel], order: str, device: str
) -> None:
    """Rows at different positions share one step; a freed slot in between forces the gather path."""
    hf, prepared = tiny
    vocab = prepared.config.vocab
    seqs = {"a": make_ids(2, 12, vocab), "b": make_ids(3, 7, vocab)}
    refs = {name: reference_logits(hf, ids).to(device) for name, ids in seqs.items()}
    pipe = LocalPipeline.build(prepared, splits_of(prepared.config.n_layers)[1], device=device)
    pipe.prefill("a", seqs["a"][:9])
    pipe.prefill("gap", seqs["b"][:2])
    pipe.prefill("b", seqs["b"][:4])
    pipe.free("gap")
    names = ["a", "b"] if order == "ascending" else ["b", "a"]
    pos = {"a": 9, "b": 4}
    for _ in range(3):
        logits = pipe.decode(names, [seqs[n][pos[n]] for n in names])
        for row, n in enumerate(names):
            torch.testing.assert_close(logits[row], refs[n][pos[n]], **TOL)
            pos[n] += 1


def test_batched_decode_of_equal_lengths(tiny: tuple[PreTrainedModel, PreparedModel]) -> None:
    """Equal-length rows in consecutive slots take the unmasked, block-copy path."""
    hf, prepared = tiny
    seqs = {n: make_ids(seed, 9, prepared.config.vocab) for n, seed in (("a", 7), ("b", 8))}
    refs = {n: reference_logits(hf, ids) for n, ids in seqs.items()}
    pipe = LocalPipeline.build(prepared, splits_of(prepared.config.n_layers)[2])
    for n, ids in seqs.items():
        pipe.prefill(n, ids[:6])
    for t in range(6, 9):
        logits = pipe.decode(["a", "b"], [seqs["a"][t], seqs["b"][t]])
        torch.testing.assert_close(logits[0], refs["a"][t], **TOL)
        torch.testing.assert_close(logits[1], refs["b"][t], **TOL)


def test_a_batched_decode_row_is_bitwise_the_row_decoded_alone(
    tiny: tuple[PreTrainedModel, PreparedModel],
) -> None:
    """Greedy text must not depend on what else is in the batch: a near-tie flips on any rounding
    difference. Rows of different lengths (some past the sliding window, one freed slot between
    them) decode together and each alone, in bf16 as the engine serves by default."""
    _, prepared = tiny
    vocab, n = prepared.config.vocab, prepared.config.n_layers
    seqs = {f"s{i}": make_ids(20 + i, length, vocab) for i, length in enumerate((5, 17, 9, 30, 9, 22))}
    together, alone = (LocalPipeline.build(prepared, [(0, n)], dtype=torch.bfloat16) for _ in range(2))
    for name, ids in seqs.items():
        together.prefill(name, ids[:-4])
        alone.prefill(name, ids[:-4])
    together.free("s2")
    names = [s for s in seqs if s != "s2"]
    for t in range(4, 0, -1):
        batch = together.decode(names, [seqs[s][-t] for s in names])
        for row, s in enumerate(names):
            assert torch.equal(batch[row], alone.decode([s], [seqs[s][-t]])[0]), (s, t)


@pytest.mark.parametrize("device", DEVICES)
def test_kv_handoff_between_different_splits(
    tiny: tuple[PreTrainedModel, PreparedModel], device: str
) -> None:
    hf, prepared = tiny
    n = prepared.config.n_layers
    ids = make_ids(4, 11, prepared.config.vocab)
    ref = reference_logits(hf, ids).to(device)
    prefill = LocalPipeline.build(prepared, [(0, n - 1), (n - 1, n)], device=device)
    decode = LocalPipeline.build(prepared, [(0, 1), (1, 2), (2, n)], device=device)
    torch.testing.assert_close(prefill.prefill("s", ids[:8]), ref[7], **TOL)
    moved = handoff(prefill, decode, "s")
    cfg = prepared.config
    # K and V, fp32, 8 tokens (a sliding layer ships only its window)
    assert moved == 2 * cfg.n_kv_heads * cfg.head_dim * 4 * sum(cfg.kv_tokens(i, 8) for i in range(n))
    assert all(stage.kv_bytes() == 0 for stage in prefill.stages)  # freed at the source
    for t in range(8, 11):
        torch.testing.assert_close(decode.decode(["s"], [ids[t]])[0], ref[t], **TOL)


def test_partial_import_is_tracked_and_blocks_decode(tiny: tuple[PreTrainedModel, PreparedModel]) -> None:
    _, prepared = tiny
    n = prepared.config.n_layers
    ids = make_ids(5, 6, prepared.config.vocab)
    full = load_stage(prepared, 0, n)
    full.prefill("s", torch.tensor(ids))
    kv = full.export_kv("s")
    assert sorted(kv) == list(range(n))
    cfg = prepared.config
    assert kv[0][0].shape == (cfg.n_kv_heads, cfg.kv_tokens(0, 6), cfg.head_dim)  # a window at most
    target = load_stage(prepared, 0, n, embedding=True, lm_head=True)
    assert target.import_kv("s", {0: kv[0], n + 5: kv[0]}, 6) == [0]  # unknown layers are ignored
    assert target.missing_layers("s") == list(range(1, n))
    with pytest.raises(ValueError, match="lacks KV"):
        target.decode(["s"], torch.tensor([ids[-1]]))
    target.import_kv("s", {i: kv[i] for i in range(1, n)}, 6)
    torch.testing.assert_close(
        target.decode(["s"], torch.tensor([ids[-1]])), full.decode(["s"], torch.tensor([ids[-1]])), **TOL
    )
    with pytest.raises(ValueError, match="length"):
        target.import_kv("s", {0: kv[0]}, 5)


def test_stage_holds_only_its_layers(tiny: tuple[PreTrainedModel, PreparedModel]) -> None:
    _, prepared = tiny
    weights = load_stage_weights(prepared, 1, 2, embedding=False, lm_head=False)
    assert {k.split(".")[1] for k in weights} == {"1"}
    stage = StageModel(prepared.config, 1, 2, embedding=False, lm_head=False, weights=weights)
    assert {k.split(".")[1] for k in stage.state_dict()} == {"1"}
    hidden = stage.prefill("s", torch.zeros(3, prepared.config.hidden))
    assert hidden.shape == (3, prepared.config.hidden)


def test_generate_matches_transformers_greedy(tiny: tuple[PreTrainedModel, PreparedModel]) -> None:
    hf, prepared = tiny
    ids = make_ids(6, 5, prepared.config.vocab)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    n = prepared.config.n_layers
    pipe = LocalPipeline.build(prepared, [(0, 1), (1, n)])
    out = pipe.generate(ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert out == ref[0, len(ids) :].tolist()
    assert all(stage.kv_bytes() == 0 for stage in pipe.stages)


def test_seeded_sampling_is_reproducible_across_splits(tiny: tuple[PreTrainedModel, PreparedModel]) -> None:
    _, prepared = tiny
    n = prepared.config.n_layers
    ids = make_ids(9, 5, prepared.config.vocab)
    whole, split = LocalPipeline.build(prepared, [(0, n)]), LocalPipeline.build(prepared, [(0, 1), (1, n)])

    def run(pipe: LocalPipeline, seed: int) -> list[int]:
        return pipe.generate(
            ids, SamplingParams(temperature=1.5, top_p=0.95, seed=seed, max_tokens=12, ignore_eos=True)
        )

    assert run(whole, 1) == run(split, 1)
    assert run(whole, 1) != run(whole, 2)


def test_bad_layer_ranges_and_pipelines(tiny: tuple[PreTrainedModel, PreparedModel]) -> None:
    _, prepared = tiny
    n = prepared.config.n_layers
    with pytest.raises(InputError):
        StageModel(prepared.config, 2, 1, embedding=False, lm_head=False)
    with pytest.raises(InputError):
        load_stage_weights(prepared, 0, n + 1, embedding=True, lm_head=True)
    with pytest.raises(InputError, match="tile"):
        LocalPipeline([load_stage(prepared, 0, 1), load_stage(prepared, 2, n)])
    stage = load_stage(prepared, 0, n)
    with pytest.raises(InputError, match="context"):
        stage.prefill("s", torch.zeros(prepared.config.max_context + 1, dtype=torch.long))
    with pytest.raises(InputError, match="empty"):
        stage.prefill("s", torch.zeros(0, dtype=torch.long))
    assert "s" not in stage.cache  # a refused prompt leaves no slot behind
    stage.prefill("s", torch.tensor([1, 2]))
    for seq_ids, inputs in [([], []), (["s", "s"], [1, 2]), (["s"], [1, 2])]:
        with pytest.raises(ValueError, match="decode"):
            stage.decode(seq_ids, torch.tensor(inputs, dtype=torch.long))
    with pytest.raises(KeyError, match="no KV"):
        stage.decode(["unknown"], torch.tensor([1]))

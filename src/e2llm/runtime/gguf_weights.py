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
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2llm.errors import InputError
from e2llm.runtime.quant import Int8Weight, Weight, from_mxfp4, from_q4_0, from_q4_1, from_q4_k, to_int8

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


@cache
def _reader(path: str) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable GGUF file: {err}") from err


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def hf_name(name: str) -> str | None:
    """llama.cpp tensor name -> HF name (None for tensors this runtime does not use)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK.fullmatch(name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        return None
    return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"


def check_gguf(path: Path) -> None:
    """Refuse (InputError naming file, tensor or field, value) what this runtime cannot run."""
    reader = _reader(str(path))
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise InputError(
            str(path), f"field general.architecture must be one of {', '.join(ARCHITECTURES)}", arch
        )
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise InputError(
                str(path),
                f"tensor {t.name}: quantization type must be one of {', '.join(SUPPORTED_TYPES)}",
                t.tensor_type.name,
            )


def gguf_config(path: Path) -> dict[str, Any]:
    """An HF `config.json` dict from the GGUF metadata (llama, qwen2, gpt-oss; llama with experts
    is Mixtral)."""
    check_gguf(path)
    r = _reader(str(path))
    arch = _field(r, "general.architecture")

    def get(key: str, default: Any = None) -> Any:
        return _field(r, f"{arch}.{key}", default)

    n_heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    n_experts = int(get("expert_count", 0) or 0)
    model_type = "mixtral" if arch == "llama" and n_experts else ARCHITECTURES[arch]
    names = {t.name for t in r.tensors}
    tokens = r.fields.get("tokenizer.ggml.tokens")
    raw: dict[str, Any] = {
        "model_type": model_type,
        "num_hidden_layers": int(get("block_count")),
        "hidden_size": hidden,
        "intermediate_size": int(get("expert_feed_forward_length") or get("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": int(get("attention.key_length", hidden // n_heads)),
        "vocab_size": int(get("vocab_size") or (len(tokens.data) if tokens is not None else 0)),
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
    if (rope_type := get("rope.scaling.type")) not in (None, "none"):
        raw["rope_scaling"] = {
            "rope_type": rope_type,
            "factor": float(get("rope.scaling.factor", 1.0)),
            "original_max_position_embeddings": int(get("rope.scaling.original_context_length", 4096)),
        }
        if rope_type == "yarn" and arch == "gpt-oss":
            raw["rope_scaling"] |= {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}
    for key, meta in (
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
    ):
        if (value := _field(r, meta)) is not None:
            raw[key] = int(value)
    return raw


def _unpermute(raw: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Llama q/k row order (pairs of rotary halves interleaved per head)."""
    n = raw.shape[0]
    return raw.reshape(heads, n // heads // 2, 2, -1).swapaxes(1, 2).reshape(raw.shape)


def _decode(t: Any, data: np.ndarray) -> Weight:
    """One GGUF tensor (raw rows `data`, [..., N, bytes]) in the form this runtime holds."""
    from gguf.quants import dequantize

    kind = t.tensor_type.name
    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
    if kind in ("F32", "F16"):
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32).reshape(shape))
    if kind == "BF16":
        bits = np.ascontiguousarray(data).view(np.int16).reshape(shape)
        return torch.from_numpy(bits).view(torch.bfloat16).float()
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
    dense = torch.from_numpy(dequantize(np.ascontiguousarray(flat), t.tensor_type).reshape(shape))
    return to_int8(dense)


def load_gguf_stage(
    path: Path, cfg: Any, start: int, end: int, embedding: bool, lm_head: bool
) -> dict[str, Weight]:
    """The tensors of layers [start, end) (+ embedding, + final norm and LM head) under HF
    names; a tied LM head is the embedding matrix."""
    reader = _reader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    out: dict[str, Weight] = {}
    for name, t in by_name.items():
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
        data = np.asarray(t.data)
        if cfg.model_type in ("llama", "mixtral") and short.endswith(("q_proj.weight", "k_proj.weight")):
            data = _unpermute(data, cfg.n_heads if "q_proj" in short else cfg.n_kv_heads)
        out[short] = _decode(t, data)
    if lm_head and "lm_head.weight" not in out:
        if "token_embd.weight" not in by_name:
            raise InputError(str(path), "GGUF has neither output.weight nor token_embd.weight")
        t = by_name["token_embd.weight"]
        emb = out.get("embed_tokens.weight")
        out["lm_head.weight"] = emb if emb is not None else _decode(t, np.asarray(t.data))
    return out


def has_tokenizer(path: Path) -> bool:
    return "tokenizer.ggml.tokens" in _reader(str(path)).fields

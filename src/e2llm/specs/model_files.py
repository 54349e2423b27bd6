"""`ModelSpec` from model files: a Hugging Face `config.json` (or its dict) and a GGUF header.

The planner and the runtime read a model through these same functions. Approximations
(documented, conservative): Qwen2 QKV biases and MoE shared experts are not counted in the
weights; a GGUF's quantisation maps to the nearest of our formats rounding *up* in size for
5/6-bit types (int8) and to `q4` for 1-4-bit types; a GGUF sliding window is honoured only for
GPT-OSS (the others are treated as full attention, which over- rather than under-estimates KV
memory). Whether the runtime can execute the model is its own check (runtime/architectures.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.fields import field_where, get_int, get_number
from e2llm.specs.gguf_header import read_gguf_header
from e2llm.specs.input_file import parse_json, read_input_text
from e2llm.specs.model_spec import MAX_DIM, MAX_LAYERS, ModelSpec

_HF_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def spec_from_hf_config(path: Path) -> ModelSpec:
    """Read an HF `config.json` (multimodal configs: their `text_config`)."""
    where = str(path)
    cfg = parse_json(read_input_text(path, "model config"), where)
    if not isinstance(cfg, dict):
        raise InputError(where, "model config must be a JSON object", type(cfg).__name__)
    name = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_hf_dict(cfg, where, name)


def spec_from_hf_dict(raw: Mapping[str, Any], where: str, name: str) -> ModelSpec:
    """A parsed HF config; `where` (its file) prefixes every error, `name` is used when the
    config has no `_name_or_path`."""
    cfg = {**raw, **raw["text_config"]} if isinstance(raw.get("text_config"), dict) else dict(raw)

    def need(*keys: str) -> int:
        for key in keys:
            value = cfg.get(key)
            if value is not None:
                _check_dim(value, f"{where}: {key}", keys[0])
                return int(value)
        raise InputError(f"{where}: {keys[0]}", "missing required key in model config")

    n_layers = need("num_hidden_layers", "n_layer")
    hidden = need("hidden_size", "n_embd")
    n_heads = need("num_attention_heads", "n_head")
    n_kv = need("num_key_value_heads", "num_attention_heads", "n_head")
    if not cfg.get("head_dim") and n_heads > hidden:
        raise InputError(f"{where}: num_attention_heads", f"exceeds hidden_size ({hidden})", n_heads)
    head_dim = need("head_dim") if cfg.get("head_dim") else hidden // n_heads
    n_experts = (
        need("num_local_experts", "num_experts", "n_routed_experts")
        if _has_any(cfg, "num_local_experts", "num_experts", "n_routed_experts")
        else 0
    )
    per_token = need("num_experts_per_tok", "experts_per_token") if n_experts else 0
    ffn_keys = ("moe_intermediate_size", "intermediate_size") if n_experts else ("intermediate_size",)
    intermediate = need(*ffn_keys)
    window, sliding = _hf_sliding(cfg, n_layers)
    weights, experts = _hf_precision(cfg, where)
    model_type = str(cfg.get("model_type") or "llama")
    gpt_oss = model_type == "gpt_oss"
    bias = bool(cfg.get("attention_bias", gpt_oss))
    rope = _hf_rope(cfg, where)
    return ModelSpec(
        name=str(cfg.get("_name_or_path") or name),
        n_layers=n_layers,
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=need("vocab_size"),
        max_context=need("max_position_embeddings") if cfg.get("max_position_embeddings") else 8192,
        n_experts=n_experts,
        experts_per_token=per_token,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        sliding_window=window,
        sliding_layers=sliding,
        weight_precision=weights,
        expert_precision=experts,
        kv_bytes_per_value=4.0 if weights == "fp32" else 2.0,
        model_type=model_type,
        rms_eps=get_number(cfg, "rms_norm_eps", where, default=1e-6),
        qkv_bias=model_type == "qwen2" or bias,
        o_bias=model_type != "qwen2" and bias,
        rope_theta=get_number(rope, "rope_theta", where, default=10000.0),
        rope_type=str(rope.get("rope_type") or rope.get("type") or "default"),
        rope_factor=get_number(rope, "factor", where, default=1.0),
        rope_low_freq_factor=get_number(rope, "low_freq_factor", where, default=1.0),
        rope_high_freq_factor=get_number(rope, "high_freq_factor", where, default=4.0),
        rope_original_max_position=get_int(
            rope, "original_max_position_embeddings", where, default=8192, maximum=MAX_DIM
        ),
        eos_token_ids=_token_ids(cfg.get("eos_token_id"), field_where(where, "eos_token_id")),
        rope_beta_fast=get_number(rope, "beta_fast", where, default=32.0),
        rope_beta_slow=get_number(rope, "beta_slow", where, default=1.0),
        rope_truncate=bool(rope.get("truncate", True)),
        rope_attention_factor=get_number(rope, "attention_factor", where, default=0.0),
        attention_sinks=gpt_oss,
        moe_bias=gpt_oss,
        swiglu_limit=get_number(cfg, "swiglu_limit", where, default=7.0) if gpt_oss else 0.0,
        swiglu_alpha=get_number(cfg, "swiglu_alpha", where, default=1.702),
    )


def _hf_rope(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """RoPE settings: transformers 5 keeps them in `rope_parameters`, older files in
    `rope_theta` / `rope_scaling`; the newer place wins."""
    parts = []
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key) or {}
        if not isinstance(value, Mapping):
            raise InputError(field_where(where, key), "must be a mapping", value)
        parts.append(value)
    merged = {**parts[0], **parts[1]}
    merged.setdefault("rope_theta", cfg.get("rope_theta"))
    return merged


def _token_ids(value: Any, where: str) -> tuple[int, ...]:
    """A token id or a list of them (None: none)."""
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_DIM for i in ids):
        raise InputError(where, "must be a token id or a list of token ids", value)
    return tuple(ids)


def _check_dim(value: object, where: str, key: str) -> None:
    """A positive integer within `MAX_LAYERS` (layer counts) or `MAX_DIM` (everything else)."""
    limit = MAX_LAYERS if key in ("num_hidden_layers", "n_layer", "block_count") else MAX_DIM
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise InputError(where, f"must be an integer in [1, {limit}]", value)


def _has_any(cfg: Mapping[str, Any], *keys: str) -> bool:
    return any(cfg.get(k) for k in keys)


def _hf_sliding(cfg: Mapping[str, Any], n_layers: int) -> tuple[int, tuple[int, ...]]:
    """(window, sliding layer indices): `layer_types` when given (GPT-OSS, Gemma), else a
    Mistral-style window on every layer unless `use_sliding_window` is false (Qwen2)."""
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return 0, ()
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        return (window, layers) if layers else (0, ())
    if cfg.get("use_sliding_window") is False:
        return 0, ()
    return window, tuple(range(n_layers))


def _hf_precision(cfg: Mapping[str, Any], where: str) -> tuple[str, str]:
    """(dense weight precision, expert precision) from `dtype`/`torch_dtype` and any
    `quantization_config` (mxfp4 experts, GPTQ/AWQ bits, bitsandbytes 4/8-bit)."""
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    base = _HF_DTYPES.get(str(dtype), "bf16")
    quant = cfg.get("quantization_config")
    if not isinstance(quant, dict):
        return base, base
    method = str(quant.get("quant_method", "")).lower()
    if method == "mxfp4":
        return base, "mxfp4"
    bits = quant.get("bits") or quant.get("w_bit")
    if quant.get("load_in_4bit") or bits == 4:
        return "q4", "q4"
    if quant.get("load_in_8bit") or bits == 8:
        return "int8", "int8"
    return base, base


def _gguf_precision(file_type: object) -> tuple[str, str]:
    """(dense, expert) precision of a GGUF `general.file_type` (llama.cpp's LlamaFileType)."""
    import gguf  # imported lazily: only GGUF inputs need it

    try:
        name = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")  # type: ignore[call-overload]
    except (ValueError, TypeError, OverflowError):
        return "bf16", "bf16"
    if name == "ALL_F32":
        return "fp32", "fp32"
    if name == "F16":
        return "fp16", "fp16"
    if name == "BF16":
        return "bf16", "bf16"
    if name == "MXFP4_MOE":
        return "bf16", "mxfp4"
    if name.startswith(("Q8", "Q5", "Q6")):
        return "int8", "int8"
    return "q4", "q4"


def spec_from_gguf(path: Path) -> ModelSpec:
    """Read the metadata of a GGUF file (llama.cpp's `{arch}.*` keys)."""
    header = read_gguf_header(path)
    meta = header.metadata
    where = str(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise InputError(f"{where}: general.architecture", "missing required key in GGUF header")

    def need(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise InputError(f"{where}: {arch}.{key}", "missing required key in GGUF header")
        _check_dim(value, f"{where}: {arch}.{key}", key)
        return int(value)

    n_layers = need("block_count")
    hidden = need("embedding_length")
    n_heads = need("attention.head_count")
    if n_heads > hidden and f"{arch}.attention.key_length" not in meta:
        raise InputError(
            f"{where}: {arch}.attention.head_count", f"exceeds embedding_length ({hidden})", n_heads
        )
    n_experts = need("expert_count", 0) if meta.get(f"{arch}.expert_count") else 0
    vocab = meta.get(f"{arch}.vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not 0 < vocab <= MAX_DIM:
        raise InputError(f"{where}: tokenizer.ggml.tokens", "GGUF header has no valid vocabulary size", vocab)
    window = need("attention.sliding_window", 0) if meta.get(f"{arch}.attention.sliding_window") else 0
    sliding = tuple(range(0, n_layers, 2)) if window and arch == "gpt-oss" else ()
    weights, experts = _gguf_precision(meta.get("general.file_type", -1))
    eos = "tokenizer.ggml.eos_token_id"
    return ModelSpec(
        name=path.stem,
        n_layers=n_layers,
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=need("attention.head_count_kv", n_heads),
        head_dim=need("attention.key_length", hidden // n_heads),
        intermediate=need("expert_feed_forward_length") if n_experts else need("feed_forward_length"),
        vocab=vocab,
        max_context=need("context_length", 8192),
        n_experts=n_experts,
        experts_per_token=need("expert_used_count") if n_experts else 0,
        tied_embeddings="output.weight" not in header.tensor_names,
        sliding_window=window if sliding else 0,
        sliding_layers=sliding,
        weight_precision=weights,
        expert_precision=experts,
        kv_bytes_per_value=4.0 if weights == "fp32" else 2.0,
        model_type=arch.replace("-", "_"),  # GGUF `gpt-oss` is HF `gpt_oss`
        rms_eps=get_number(meta, f"{arch}.attention.layer_norm_rms_epsilon", where, default=1e-6),
        rope_theta=get_number(meta, f"{arch}.rope.freq_base", where, default=10000.0),
        eos_token_ids=_token_ids(meta.get(eos), f"{where}: {eos}"),
    )

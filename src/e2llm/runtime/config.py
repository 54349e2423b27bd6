"""The shape of a Llama-family decoder, read from a Hugging Face `config.json`.

One small frozen dataclass is all the runtime model needs; it is parsed from the plain dict so the
model never depends on a transformers config class (Llama, Qwen2, Mistral and SmolLM2 differ only
in a few switches: q/k/v bias, sliding window, rope scaling, tied embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.model import ModelSpec

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gpt_oss", "mixtral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A Llama-family decoder. Layers are indexed 0..n_layers-1 globally on every stage."""

    model_type: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    max_position: int
    qkv_bias: bool = False  # Qwen2 (and Llama attention_bias): biases on q/k/v projections
    o_bias: bool = False  # Llama attention_bias: bias on the output projection too
    rope_type: str = "default"  # default | linear | llama3
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position: int = 8192  # llama3 only
    sliding_window: int = 0  # 0: full attention in every layer
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    sliding_layers: tuple[int, ...] | None = None  # None: every layer slides (when a window is set)
    rope_beta_fast: float = 32.0  # yarn only
    rope_beta_slow: float = 1.0  # yarn only
    rope_truncate: bool = True  # yarn only
    rope_attention_factor: float | None = None  # yarn only; None: from the factor
    # Mixture of experts (GPT-OSS, Mixtral): 0 experts is a dense SwiGLU FFN. Routing is top-k on
    # the router logits, then softmax over the k (equal to Mixtral's softmax-top-k-renormalise).
    n_experts: int = 0
    experts_per_token: int = 0
    attention_sinks: bool = False  # GPT-OSS: a learned per-head logit that takes softmax mass
    moe_bias: bool = False  # GPT-OSS: biases on the router and the experts
    swiglu_limit: float = 0.0  # GPT-OSS clamped GLU (alpha 1.702, limit 7); 0: plain SwiGLU
    swiglu_alpha: float = 1.702

    def window(self, layer: int) -> int:
        """Sliding window of `layer` (0: full attention)."""
        if not self.sliding_window or (self.sliding_layers is not None and layer not in self.sliding_layers):
            return 0
        return self.sliding_window

    def kv_bytes_per_token_layer(self, bytes_per_value: int) -> int:
        """K and V of one token in one layer."""
        return 2 * self.n_kv_heads * self.head_dim * bytes_per_value

    def to_spec(self, name: str) -> ModelSpec:
        """The cost model's view of this model (fp32 weights and KV, as the runtime holds them)."""
        return ModelSpec(
            name=name,
            n_layers=self.n_layers,
            hidden=self.hidden,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            intermediate=self.intermediate,
            vocab=self.vocab,
            max_context=self.max_position,
            tied_embeddings=self.tied_embeddings,
            weight_precision="fp32",
            kv_bytes_per_value=4.0,
        )


def _rope(raw: Mapping[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in `rope_parameters`; older files use rope_theta/rope_scaling."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    merged = {**scaling, **params}
    merged.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    merged["rope_type"] = merged.get("rope_type", merged.get("type", "default")) or "default"
    return merged


def config_from_dict(raw: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
    """Parse a Hugging Face config dict; unsupported architectures raise `InputError`."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(where, f"model_type must be one of {', '.join(SUPPORTED_MODEL_TYPES)}", model_type)
    if raw.get("hidden_act", "silu") != "silu":
        raise InputError(where, "hidden_act must be silu", raw.get("hidden_act"))
    if raw.get("mlp_bias"):
        raise InputError(where, "mlp_bias is not supported", True)
    rope = _rope(raw)
    if rope["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise InputError(
            where, f"rope type must be one of {', '.join(SUPPORTED_ROPE_TYPES)}", rope["rope_type"]
        )
    window = 0
    sliding_layers: tuple[int, ...] | None = None
    if model_type in ("mistral", "mixtral"):
        window = int(raw.get("sliding_window") or 0)
    elif model_type == "qwen2" and raw.get("use_sliding_window"):
        raise InputError(where, "Qwen2 use_sliding_window is not supported", True)
    elif model_type == "gpt_oss":
        window = int(raw.get("sliding_window") or 0)
        n = int(raw.get("num_hidden_layers") or 0)
        types = raw.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)
        ]
        sliding_layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    gpt_oss = model_type == "gpt_oss"

    def num(key: str, default: Any = None, kind: type = int, src: Mapping[str, Any] = raw) -> Any:
        value = src.get(key, default)
        try:
            out = kind(value)
        except (TypeError, ValueError):
            raise InputError(where, f"field {key} must be a number", value) from None
        if out <= 0:
            raise InputError(where, f"field {key} must be > 0", value)
        return out

    n_heads = num("num_attention_heads")
    hidden = num("hidden_size")
    eos = raw.get("eos_token_id")
    eos_list = eos if isinstance(eos, list) else [] if eos is None else [eos]
    return ModelConfig(
        model_type=str(model_type),
        n_layers=num("num_hidden_layers"),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=num("num_key_value_heads", n_heads) if raw.get("num_key_value_heads") else n_heads,
        head_dim=num("head_dim") if raw.get("head_dim") else hidden // n_heads,
        intermediate=num("intermediate_size"),
        vocab=num("vocab_size"),
        rope_theta=num("rope_theta", kind=float, src=rope),
        rms_eps=num("rms_norm_eps", 1e-6, float),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        max_position=num("max_position_embeddings", 2048),
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", gpt_oss)),
        o_bias=model_type != "qwen2" and bool(raw.get("attention_bias", gpt_oss)),
        rope_type=str(rope["rope_type"]),
        rope_factor=num("factor", 1.0, float, rope),
        rope_low_freq_factor=num("low_freq_factor", 1.0, float, rope),
        rope_high_freq_factor=num("high_freq_factor", 4.0, float, rope),
        rope_original_max_position=num("original_max_position_embeddings", 8192, int, rope),
        sliding_window=window,
        eos_token_ids=tuple(int(e) for e in eos_list),
        bos_token_id=None if raw.get("bos_token_id") is None else int(raw["bos_token_id"]),
        sliding_layers=sliding_layers,
        rope_beta_fast=num("beta_fast", 32.0, float, rope),
        rope_beta_slow=num("beta_slow", 1.0, float, rope),
        rope_truncate=bool(rope.get("truncate", True)),
        rope_attention_factor=None
        if rope.get("attention_factor") is None
        else float(rope["attention_factor"]),
        n_experts=num("num_local_experts") if raw.get("num_local_experts") else 0,
        experts_per_token=num("num_experts_per_tok") if raw.get("num_local_experts") else 0,
        attention_sinks=gpt_oss,
        moe_bias=gpt_oss,
        swiglu_limit=float(raw.get("swiglu_limit", 7.0)) if gpt_oss else 0.0,
        swiglu_alpha=float(raw.get("swiglu_alpha", 1.702)),
    )

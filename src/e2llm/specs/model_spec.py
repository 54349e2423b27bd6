"""`ModelSpec`: the one description of a model that every layer shares.

The planner, the cost model and the simulator read its shape and weight formats; the runtime's
stage model reads the same object for its numerics (RoPE, norm epsilon, biases, stop tokens).
Smaller views are derived from it, never re-listed: a profile's one-layer shape
(`profile_shape`) and the profiler's cut-down stack (`profile/target.py`) are `replace`d copies.

Readers: `specs/model_catalog.py` (catalog names, `load_model`), `specs/model_files.py` (an HF
`config.json` or a GGUF header). Sizes are bytes; memory is counted in GiB (`specs/units.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.fields import REQUIRED, as_mapping, check_keys, field_where, get_int, get_number, get_str

# Bytes per parameter each weight format streams per token, block scales included, as the
# cost model's llama.cpp calibration assumes (int8: one fp16 scale per 32 weights (Q8_0);
# q4: 4-bit + fp16 scale per 32 (Q4_0); mxfp4: 4-bit + one 8-bit exponent per 32, as GPT-OSS).
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "int8": 1.0625,
    "q4": 0.5625,
    "mxfp4": 0.53125,
}
# Bytes per parameter the runtime holds in memory (what stage memory and the planner's fit use):
# int8 is per-row int8 (one scale per row); q4 is torch's int4 kernel layout, 4-bit codes plus a
# 16-bit scale and zero per 32, which GGUF Q4_0/Q4_1/Q4_K load into.
RESIDENT_BYTES_PER_PARAM: dict[str, float] = {**BYTES_PER_PARAM, "int8": 1.0, "q4": 0.625}
QUANTIZED = ("int8", "q4", "mxfp4")


def table_precision(weight_precision: str) -> str:
    """Embedding and LM head precision: quantized models keep them per-row int8 (llama.cpp files
    keep token_embd/output at 8 bits too, and a row lookup needs a per-row layout)."""
    return "int8" if weight_precision in QUANTIZED else weight_precision


# Bounds for model files (config.json, GGUF, a plan's model_spec), far above any real model:
# past them the cost model's arithmetic overflows or a per-layer tuple eats the memory.
MAX_LAYERS = 100_000
MAX_DIM = 2**24  # widths, heads, experts, vocabulary, context length


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer. Dense when `n_experts == 0`.

    For MoE models `intermediate` is one expert's FFN width; compute scales with the
    `experts_per_token` active experts, memory with all `n_experts`. Layers are indexed
    0..n_layers-1 globally on every stage. Fields below `kv_bytes_per_value` are the numerics
    only the runtime needs; their defaults are Llama's.
    """

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_context: int = 8192
    n_experts: int = 0
    experts_per_token: int = 0
    tied_embeddings: bool = False
    sliding_window: int = 0  # 0: every layer attends to the full context
    sliding_layers: tuple[int, ...] = ()  # indices of the sliding-window layers
    weight_precision: str = "bf16"  # attention, dense FFN, embeddings, LM head
    expert_precision: str = "bf16"  # MoE expert FFNs
    kv_bytes_per_value: float = 2.0  # KV cache element size (bf16/fp16)
    model_type: str = "llama"  # Hugging Face `model_type` (llama, qwen2, mistral, gpt_oss, ...)
    rms_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 (and Llama attention_bias): biases on q/k/v projections
    o_bias: bool = False  # Llama attention_bias: bias on the output projection too
    rope_theta: float = 10000.0
    rope_type: str = "default"  # default | linear | llama3 | yarn ...
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position: int = 8192  # llama3 / yarn
    eos_token_ids: tuple[int, ...] = ()  # tokens that end a generation
    rope_beta_fast: float = 32.0  # yarn only
    rope_beta_slow: float = 1.0  # yarn only
    rope_truncate: bool = True  # yarn only
    rope_attention_factor: float = 0.0  # yarn only; 0: from the factor
    # GPT-OSS: a learned per-head logit that takes softmax mass; biases on the router and experts;
    # the clamped GLU (limit 7, alpha 1.702; limit 0: plain SwiGLU). MoE routing is top-k on the
    # router logits, then softmax over the k (equal to Mixtral's softmax-top-k-renormalise).
    attention_sinks: bool = False
    moe_bias: bool = False
    swiglu_limit: float = 0.0
    swiglu_alpha: float = 1.702

    def window(self, layer: int) -> int:
        """Sliding window of `layer` (0: full attention)."""
        return self.sliding_window if self.sliding_window and layer in self.sliding_layers else 0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def attn_params(self) -> int:
        q = self.hidden * self.n_heads * self.head_dim
        kv = 2 * self.hidden * self.n_kv_heads * self.head_dim
        o = self.n_heads * self.head_dim * self.hidden
        return q + kv + o

    @property
    def expert_params(self) -> int:
        """Parameters of one gated FFN (gate, up, down) of width `intermediate`."""
        return 3 * self.hidden * self.intermediate

    @property
    def layer_params(self) -> int:
        """All parameters of one decoder layer (memory)."""
        router = self.hidden * self.n_experts
        ffn = self.expert_params * max(self.n_experts, 1)
        return self.attn_params + ffn + router + 2 * self.hidden

    @property
    def layer_active_params(self) -> int:
        """Parameters touched per token in one decoder layer (compute)."""
        router = self.hidden * self.n_experts
        ffn = self.expert_params * (self.experts_per_token if self.is_moe else 1)
        return self.attn_params + ffn + router + 2 * self.hidden

    def _layer_bytes(self, table: dict[str, float]) -> float:
        dense = self.layer_params - (self.expert_params * self.n_experts if self.is_moe else 0)
        experts = self.expert_params * self.n_experts if self.is_moe else 0
        return dense * table[self.weight_precision] + experts * table[self.expert_precision]

    @property
    def layer_weight_bytes(self) -> float:
        """Memory of one decoder layer's weights as the runtime holds them."""
        return self._layer_bytes(RESIDENT_BYTES_PER_PARAM)

    @property
    def layer_stream_bytes(self) -> float:
        """Weight bytes one decoder layer streams per pass (the roofline's traffic)."""
        return self._layer_bytes(BYTES_PER_PARAM)

    @property
    def embedding_bytes(self) -> float:
        return self.vocab * self.hidden * RESIDENT_BYTES_PER_PARAM[table_precision(self.weight_precision)]

    @property
    def lm_head_bytes(self) -> float:
        """Final norm + LM head. With tied embeddings the head reuses the embedding matrix, but a
        stage that holds the head without the embedding still needs its own copy."""
        return self.embedding_bytes + self.hidden * 2

    def stage_weight_bytes(self, n_layers: int, *, embedding: bool = False, lm_head: bool = False) -> float:
        """Weights of a stage holding `n_layers` layers (+ the embedding, + final norm and LM
        head). A tied head on the stage that also embeds shares the embedding matrix."""
        b = n_layers * self.layer_weight_bytes
        if embedding:
            b += self.embedding_bytes
        if lm_head:
            b += self.hidden * 2 if embedding and self.tied_embeddings else self.lm_head_bytes
        return b

    def kv_bytes_per_token(self, layer: int) -> float:
        """K and V of one token in one layer (GQA: n_kv_heads, not n_heads)."""
        return 2 * self.n_kv_heads * self.head_dim * self.kv_bytes_per_value

    def kv_tokens(self, layer: int, context: int) -> int:
        """Tokens of KV a layer keeps for a sequence of `context` tokens."""
        if self.sliding_window and layer in self.sliding_layers:
            return min(context, self.sliding_window)
        return context

    @property
    def total_params(self) -> int:
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.n_layers * self.layer_params + self.vocab * self.hidden + head + self.hidden

    @property
    def total_weight_bytes(self) -> float:
        """All weights of the model on one device: layers, embedding, final norm + LM head
        (the head shares the embedding matrix when tied)."""
        head = self.hidden * 2 if self.tied_embeddings else self.lm_head_bytes
        return self.n_layers * self.layer_weight_bytes + self.embedding_bytes + head


# What a device profile records of the profiled model (cost/profile.py writes and reads these):
# one layer's shape and storage, enough to scale its times to another model.
PROFILE_FIELDS = (
    "name",
    "hidden",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "intermediate",
    "vocab",
    "n_experts",
    "experts_per_token",
    "weight_precision",
    "expert_precision",
    "kv_bytes_per_value",
)


def profile_shape(model: ModelSpec) -> ModelSpec:
    """The view of `model` a profile describes: one full-attention layer of its shape and storage,
    every other field at its default (what a profile file can give back)."""
    return ModelSpec(n_layers=1, **{k: getattr(model, k) for k in PROFILE_FIELDS})


def model_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """Plain JSON-able data (a plan's `model_spec`); `model_from_dict` gives back an equal spec."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


_FIELDS = dataclasses.fields(ModelSpec)


def model_from_dict(d: Mapping[str, Any], source: str) -> ModelSpec:
    """Validate plain data (e.g. a plan's embedded model) into a `ModelSpec`; a missing optional
    field takes the class default (plans written before the field existed still load)."""
    d = as_mapping(d, source)
    check_keys(d, [f.name for f in _FIELDS], source)
    kw: dict[str, Any] = {}
    for f in _FIELDS:
        key, default = f.name, REQUIRED if f.default is dataclasses.MISSING else f.default
        if f.type == "int":
            top = MAX_LAYERS if key == "n_layers" else MAX_DIM
            kw[key] = get_int(d, key, source, default=default, minimum=1 if default else 0, maximum=top)
        elif f.type == "float":
            # fields whose default is 0 mean "off" (GPT-OSS numerics): 0 is allowed there
            kw[key] = get_number(d, key, source, default=default, strict=default != 0)
        elif f.type == "bool":
            kw[key] = bool(d.get(key, default))
        elif f.type == "str":
            kw[key] = get_str(d, key, source, default=default)
        else:  # tuple[int, ...]: layer indices, token ids
            kw[key] = _int_list(d.get(key) or [], field_where(source, key))
    for key in ("weight_precision", "expert_precision"):
        if kw[key] not in BYTES_PER_PARAM:
            raise InputError(field_where(source, key), "unsupported precision", kw[key])
    n, k = kw["n_experts"], kw["experts_per_token"]
    if (n == 0) != (k == 0) or k > n:
        raise InputError(
            field_where(source, "experts_per_token"), f"must be 0 < k <= n_experts={n}, or 0 if dense", k
        )
    return ModelSpec(**kw)


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise InputError(where, "must be a list of integers (layer indices, token ids)", value)
    return tuple(value)

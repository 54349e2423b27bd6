"""Model shapes: what the cost model needs to know about a transformer, dense or MoE."""

from __future__ import annotations

from dataclasses import dataclass

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
    `experts_per_token` active experts, memory with all `n_experts`.
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

"""Per-layer quantities of a model that the timing sources need, averaged over its layer types.

`DeviceTimes` answers per decoder layer, but a model may mix full-attention and sliding-window
layers (GPT-OSS alternates them); the per-layer figures here are means over all layers, so
`n_layers x` a per-layer time is the model's total. Computed once per (model, timing source):
the simulator asks for millions of layer times, and ModelSpec's properties recompute on access.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.specs.model_spec import BYTES_PER_PARAM, ModelSpec


@dataclass(frozen=True, slots=True)
class LayerShape:
    active_params: int  # parameters one token touches in one layer (FLOPs / 2)
    dense_bytes: float  # weight bytes every call reads: attention, norms, router, dense FFN
    expert_bytes: float  # weight bytes of one expert FFN (0 if dense)
    n_experts: int
    experts_per_token: int
    n_heads: int
    attn_width: int  # n_heads * head_dim
    kv_bytes_per_token: float  # K and V of one token, mean over layers (GQA-aware)
    sliding_fraction: float  # share of layers with a sliding window
    window: int  # sliding window in tokens (0: none)

    @classmethod
    def of(cls, m: ModelSpec) -> LayerShape:
        e = m.expert_params * BYTES_PER_PARAM[m.expert_precision] if m.is_moe else 0.0
        n_sliding = len(m.sliding_layers) if m.sliding_window else 0
        layers = max(m.n_layers, 1)
        return cls(
            active_params=m.layer_active_params,
            dense_bytes=m.layer_stream_bytes - e * m.n_experts,
            expert_bytes=e,
            n_experts=m.n_experts,
            experts_per_token=m.experts_per_token,
            n_heads=m.n_heads,
            attn_width=m.n_heads * m.head_dim,
            kv_bytes_per_token=sum(m.kv_bytes_per_token(i) for i in range(m.n_layers)) / layers,
            sliding_fraction=n_sliding / layers,
            window=m.sliding_window if n_sliding else 0,
        )

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct experts hit when `tokens` tokens each pick `experts_per_token` of
        `n_experts` (uniform routing): n_e·(1-(1-k/n_e)^tokens). 0 for a dense model."""
        if not self.n_experts or tokens <= 0:
            return 0.0
        n = self.n_experts
        return n * (1.0 - (1.0 - self.experts_per_token / n) ** tokens)

    def read_bytes(self, tokens: int) -> float:
        """Weight bytes one layer call over `tokens` tokens reads: the dense part plus the
        experts those tokens are routed to."""
        return self.dense_bytes + self.experts_touched(tokens) * self.expert_bytes

    def prefill_context(self, tokens: int) -> float:
        """Mean keys one query attends to in a causal prefill of `tokens` tokens (full layers:
        (T+1)/2; sliding layers: capped by the window)."""
        full = (tokens + 1) / 2.0
        w = self.window
        if not w or tokens <= w:
            return full
        # queries 1..w see 1..w keys, the remaining T-w queries see w keys each
        sliding = (w * (w + 1) / 2.0 + (tokens - w) * w) / tokens
        return self.sliding_fraction * sliding + (1.0 - self.sliding_fraction) * full

    def kv_tokens(self, context: int) -> float:
        """KV tokens one layer holds (and a decode step reads) at `context`."""
        if not self.window:
            return float(context)
        return self.sliding_fraction * min(context, self.window) + (1.0 - self.sliding_fraction) * context

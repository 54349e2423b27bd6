"""The layers of a Llama-family decoder (gpt-fast style): RMSNorm, RoPE, GQA attention over the
stage's KV cache, SwiGLU MLP, and the mapping from Hugging Face checkpoint names to these modules
(q/k/v and gate/up are fused into one matrix each, so a layer runs 4 GEMMs instead of 7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2llm.runtime.kv import KVCache, SlotBatch
from e2llm.specs.model_spec import ModelSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32 whatever the weight dtype, then scale in the weight dtype (as HF Llama);
        # spelled out: F.rms_norm is a slower composite on CPU
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: ModelSpec) -> Tensor:
    """Inverse frequencies of rotary embeddings [head_dim / 2], fp32, with rope scaling applied."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "llama3":  # Llama 3.1: scale long wavelengths, blend the middle band
        low_wavelen = cfg.rope_original_max_position / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_original_max_position / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / cfg.rope_factor, inv)
        smooth = (cfg.rope_original_max_position / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv


def rope_tables(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed sin [B, T, 1, D] for `positions` [B, T] (angles in fp32, as HF computes them).
    The sin table carries rotate-half's sign: [-sin, sin] over the two halves."""
    freqs = positions[..., None].float() * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1).to(dtype)[:, :, None], torch.cat((-sin, sin), -1).to(dtype)[:, :, None]


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate-half RoPE (HF layout), bit-identical to x*cos + cat(-x2, x1)*sin.
    x [B, T, heads, D]; tables [B, T, 1, D] from `rope_tables`."""
    b, t, h, d = x.shape
    swapped = x.view(b, t, h, 2, d // 2).flip(-2).view(b, t, h, d)  # [x2, x1]
    return x * cos + swapped * signed_sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelSpec, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden, qkv_out, bias=cfg.qkv_bias)  # q, k, v fused: one GEMM
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden, bias=cfg.o_bias)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: SlotBatch,
        mask: Tensor | None,
        causal: bool,
    ) -> Tensor:
        b, t, _ = x.shape
        d = self.head_dim
        qkv = self.wqkv(x).view(b, t, self.n_heads + 2 * self.n_kv_heads, d)
        qk = apply_rope(qkv[:, :, : self.n_heads + self.n_kv_heads], cos, sin)  # q and k in one go
        q, k = qk[:, :, : self.n_heads], qk[:, :, self.n_heads :]
        keys, values = cache.update(
            self.layer, slots, positions, k, qkv[:, :, self.n_heads + self.n_kv_heads :]
        )
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys,
            values,
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * d))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelSpec):
        super().__init__()
        self.w13 = nn.Linear(cfg.hidden, 2 * cfg.intermediate, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelSpec, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: SlotBatch,
        mask: Tensor | None,
        causal: bool,
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, positions, cache, slots, mask, causal)
        return h + self.feed_forward(self.ffn_norm(h))


def fuse_checkpoint(weights: Mapping[str, Tensor], cfg: ModelSpec) -> dict[str, Tensor]:
    """HF names (`layers.3.self_attn.q_proj.weight`, ...) -> this module's fused parameters."""
    out: dict[str, Tensor] = {}
    layers = sorted({int(k.split(".")[1]) for k in weights if k.startswith("layers.")})
    for i in layers:
        p = f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        out[p + "attention.wqkv.weight"] = torch.cat([weights[attn + f"{n}_proj.weight"] for n in "qkv"])
        if cfg.qkv_bias:
            out[p + "attention.wqkv.bias"] = torch.cat([weights[attn + f"{n}_proj.bias"] for n in "qkv"])
        out[p + "attention.wo.weight"] = weights[attn + "o_proj.weight"]
        if cfg.o_bias:
            out[p + "attention.wo.bias"] = weights[attn + "o_proj.bias"]
        out[p + "feed_forward.w13.weight"] = torch.cat(
            [weights[mlp + "gate_proj.weight"], weights[mlp + "up_proj.weight"]]
        )
        out[p + "feed_forward.w2.weight"] = weights[mlp + "down_proj.weight"]
        out[p + "attention_norm.weight"] = weights[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = weights[p + "post_attention_layernorm.weight"]
    for key in ("embed_tokens.weight", "norm.weight", "lm_head.weight"):
        if key in weights:
            out[key] = weights[key]
    return out

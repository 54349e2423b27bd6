"""The layers of a decoder stage (gpt-fast style): RMSNorm, RoPE (default, linear, llama3, yarn),
GQA attention over the stage's KV cache (sliding window and GPT-OSS attention sinks per layer),
a SwiGLU FFN or a top-k mixture of experts.

Activations are 2-D, [B * T, features], so a decode step runs few ops per layer: batch-1 decode
is bound by op dispatch, not arithmetic, on a CPU (RoPE in place, K and V written in one copy).

Linear layers are built as meta placeholders and replaced by `StageModel.load_weights` with the
module their weight's form needs (`quant.make_linear`): dense, int4 or int8. q/k/v and gate/up are
fused into one matrix each, so a dense layer runs 4 GEMMs instead of 7.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2llm.runtime.kv import KVStep
from e2llm.runtime.quant import Mxfp4Weight, Weight, make_linear
from e2llm.specs.model_spec import ModelSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # torch's composite normalises in fp32 and scales in the weight dtype, as HF Llama does,
        # in one call from Python (cheaper than spelling it out: decode is dispatch-bound)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def _yarn(cfg: ModelSpec, inv: Tensor) -> Tensor:
    """YaRN (as transformers' `_compute_yarn_parameters`): interpolate the low frequencies by
    `rope_factor`, keep the high ones, ramp between the beta_fast and beta_slow rotations."""
    dim, base = cfg.head_dim, cfg.rope_theta

    def correction_dim(rotations: float) -> float:
        return (
            dim * math.log(cfg.rope_original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(base))
        )

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    return inv / cfg.rope_factor * (1 - extrapolation) + inv * extrapolation


def rope_scale(cfg: ModelSpec) -> float:
    """The factor YaRN applies to cos and sin (1 for the other rope types)."""
    if cfg.rope_type != "yarn":
        return 1.0
    if cfg.rope_attention_factor:
        return cfg.rope_attention_factor
    return 1.0 if cfg.rope_factor <= 1 else 0.1 * math.log(cfg.rope_factor) + 1.0


def rope_inv_freq(cfg: ModelSpec) -> Tensor:
    """Inverse frequencies of rotary embeddings [head_dim / 2], fp32, with rope scaling applied."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "yarn":
        return _yarn(cfg, inv)
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


def rope_tables(
    positions: Tensor, inv_freq: Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """cos [N, 1, 1, D/2] and signed sin [N, 1, 2, D/2] for the N = B * T `positions` [B, T]
    (angles in fp32, as HF computes them). The sin table carries rotate-half's sign: [-sin, sin]
    over the two halves."""
    freqs = positions.reshape(-1, 1).float() * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype)[:, None, None], torch.stack((-sin, sin), 1).to(dtype)[:, None]


def apply_rope_(x: Tensor, heads: int, cos: Tensor, signed_sin: Tensor) -> None:
    """Rotate-half RoPE (HF layout) of the first `heads` heads of x [N, (heads + ...) * D], in
    place: x * cos + [x2, x1] * [-sin, sin] per head, tables from `rope_tables`."""
    d = cos.shape[-1]
    h = x.view(x.shape[0], -1, 2, d)[:, :heads]  # [N, heads, halves, D/2]
    swapped = h.flip(2)  # [x2, x1], a copy: read before h is overwritten
    h.mul_(cos).add_(swapped.mul_(signed_sin))  # HF's roundings in bf16 (addcmul_ rounds once)


def _placeholder(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    with torch.device("meta"):
        return nn.Linear(n_in, n_out, bias=bias)


def sink_attention(
    q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, mask: Tensor | None, causal: bool
) -> Tensor:
    """Softmax attention where each head also attends to a sink logit with a zero value (GPT-OSS).
    q [B, H, T, D]; k, v [B, KVH, L, D]; mask bool [B, 1, T, L] or None; returns [B, H, T, D]."""
    b, h, t, d = q.shape
    kvh, length = k.shape[1], k.shape[2]
    qg = q.reshape(b, kvh, h // kvh * t, d)
    scores = (qg @ k.transpose(-1, -2)).view(b, kvh, h // kvh, t, length) * d**-0.5
    if causal:
        mask = torch.ones(t, length, dtype=torch.bool, device=q.device).tril(length - t)[None, None]
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    sink = sinks.to(scores.dtype).view(1, kvh, h // kvh, 1, 1).expand(b, -1, -1, t, 1)
    probs = torch.cat((scores, sink), -1).softmax(-1)[..., :-1]
    return (probs.view(b, kvh, h // kvh * t, length) @ v).view(b, h, t, d)


class Attention(nn.Module):
    def __init__(self, cfg: ModelSpec, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv: nn.Module = _placeholder(cfg.hidden, qkv_out, cfg.qkv_bias)  # q, k, v fused
        self.wo: nn.Module = _placeholder(cfg.n_heads * cfg.head_dim, cfg.hidden, cfg.o_bias)
        self.sinks = nn.Parameter(torch.empty(cfg.n_heads, device="meta")) if cfg.attention_sinks else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: KVStep) -> Tensor:
        """x [B * T, hidden] -> [B * T, hidden]; the cache step stores this layer's new K/V
        (kept in the layout the fused projection produces: K heads, then V heads)."""
        b, t = step.rows, step.tokens
        d, nh, nkv = self.head_dim, self.n_heads, self.n_kv_heads
        qkv = self.wqkv(x)
        apply_rope_(qkv, nh + nkv, cos, sin)  # q and k in one go
        keys, values, mask, causal, rows = step.update(self.layer, qkv[:, nh * d :])
        q = qkv[:, : nh * d].view(b, t, nh, d).transpose(1, 2)
        if keys.dtype != q.dtype:  # KV held at fewer bytes than the activations
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        if rows is None:
            y = self._attend(q, keys, values, mask, causal)
        else:  # decode rows of different lengths: each over its own keys, as if alone
            y = torch.cat(
                [
                    self._attend(q[r : r + 1], keys[r : r + 1, :, :n], values[r : r + 1, :, :n], None, False)
                    for r, n in enumerate(rows)
                ]
            )
        return self.wo(y.transpose(1, 2).reshape(b * t, nh * d))

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        if self.sinks is not None:
            return sink_attention(q, keys, values, self.sinks, mask, causal)
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=causal, enable_gqa=self.n_heads != self.n_kv_heads
        )


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelSpec):
        super().__init__()
        self.w13: nn.Module = _placeholder(cfg.hidden, 2 * cfg.intermediate, False)  # gate and up, fused
        self.w2: nn.Module = _placeholder(cfg.intermediate, cfg.hidden, False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Experts(nn.Module):
    """A bank of gated FFN experts, [E] x (w13 [2I, H] = gate rows then up rows, w2 [H, I]).

    MXFP4 banks stay packed and each selected expert is dequantized for its call; other forms
    hold one linear module per expert. Either way a token only touches its k experts."""

    def __init__(self, cfg: ModelSpec):
        super().__init__()
        self.n_experts, self.k = cfg.n_experts, cfg.experts_per_token
        self.limit, self.alpha = cfg.swiglu_limit, cfg.swiglu_alpha
        self.router: nn.Module = _placeholder(cfg.hidden, cfg.n_experts, cfg.moe_bias)
        self.dtype = torch.float32
        self.packed = False
        self.linears = nn.ModuleList()

    def load(
        self,
        w13: Weight | list[Weight],
        w2: Weight | list[Weight],
        b13: Tensor | None,
        b2: Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.dtype = dtype
        bias = lambda b, e: None if b is None else b[e]  # noqa: E731
        if isinstance(w13, Mxfp4Weight) and isinstance(w2, Mxfp4Weight):
            self.packed = True
            for name, w in (("w13", w13), ("w2", w2)):
                self.register_buffer(f"{name}_blocks", w.blocks.to(device))
                self.register_buffer(f"{name}_exponents", w.exponents.to(device))
            for name, b in (("w13_bias", b13), ("w2_bias", b2)):
                self.register_buffer(name, None if b is None else b.to(device=device, dtype=dtype))
            return
        w13s = w13 if isinstance(w13, list) else [_expert(w13, e) for e in range(self.n_experts)]
        w2s = w2 if isinstance(w2, list) else [_expert(w2, e) for e in range(self.n_experts)]
        for e in range(self.n_experts):
            self.linears.append(make_linear(w13s[e], bias(b13, e), dtype, device))
            self.linears.append(make_linear(w2s[e], bias(b2, e), dtype, device))

    def _bank(self, name: str, e: int) -> tuple[Tensor, Tensor | None]:
        """Expert `e` of the packed bank `name` (w13 or w2), dequantized, and its bias."""
        blocks, exponents, bias = (getattr(self, name + s) for s in ("_blocks", "_exponents", "_bias"))
        w = Mxfp4Weight(blocks[e], exponents[e]).dequantize(self.dtype)
        return w, None if bias is None else bias[e]

    def _expert(self, e: int, x: Tensor) -> Tensor:
        h = F.linear(x, *self._bank("w13", e)) if self.packed else self.linears[2 * e](x)
        gate, up = h.chunk(2, dim=-1)
        if self.limit:  # GPT-OSS: clamped gate * sigmoid(alpha * gate) * (up + 1)
            gate = gate.clamp(max=self.limit)
            up = up.clamp(-self.limit, self.limit)
            h = (up + 1) * (gate * torch.sigmoid(gate * self.alpha))
        else:
            h = F.silu(gate) * up
        if self.packed:
            return F.linear(h, *self._bank("w2", e))
        return self.linears[2 * e + 1](h)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        top, chosen = torch.topk(logits, self.k, dim=-1)
        weights = top.softmax(-1).to(x.dtype)
        out = torch.zeros_like(x)
        if x.shape[0] == 1:  # decode: the k experts in a row, no grouping
            for j, e in enumerate(chosen[0].tolist()):
                out += self._expert(e, x) * weights[0, j]
            return out.view(shape)
        for e in chosen.unique().tolist():
            rows, slot = torch.where(chosen == e)
            out.index_add_(0, rows, self._expert(e, x[rows]) * weights[rows, slot, None])
        return out.view(shape)


def _expert(w: Weight, e: int) -> Weight:
    if isinstance(w, Tensor):
        return w[e]
    if isinstance(w, Mxfp4Weight):
        return w.select(e).dequantize()
    return type(w)(*(getattr(w, f)[e] for f in w.__slots__))


class Block(nn.Module):
    def __init__(self, cfg: ModelSpec, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.feed_forward: nn.Module = Experts(cfg) if cfg.n_experts else FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: KVStep) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, step)
        return h + self.feed_forward(self.ffn_norm(h))

"""Roofline timing of one device from its spec sheet: compute- or memory-bound, plus a fixed cost.

Every call (one decoder layer, the LM head, the embedding) costs

    t = call overhead + max(FLOPs / (tflops * compute), bytes / (bandwidth * memory))

The `max` is the classic roofline: a kernel is limited by either arithmetic or memory traffic.
We also tried the sum of the two terms: fitted to the H200 measurements
(`benchmarks/cost_vs_measured.py`), the max gives a mean |log error| of 0.074 against 0.086 for
the sum, and the sum only gets there with a compute efficiency of 100% (it double-counts the
weight reads that large GEMMs overlap with their arithmetic).
The fixed overhead is what a pure roofline misses: kernel launches and framework code. On the
H200 in eager PyTorch it is ~0.5 ms per layer call, more than the whole memory time of a small
layer; llama.cpp-class engines on edge devices pay far less per layer.

Work per call, per decoder layer (averaged over the model's layer types: sliding-window layers
attend to at most `sliding_window` keys):
- prefill of T tokens: FLOPs = 2·active_params·T + 4·T·ctx·n_heads·head_dim (QKᵀ and PV, causal:
  ctx = mean keys per query, ≈ T/2 for full attention); bytes = dense weights + the experts the
  T·top_k routed picks touch (expected n_e·(1-(1-k/n_e)^T)) + activations + KV written.
- decode of B sequences at context C: FLOPs = 2·active_params·B + 4·B·C·n_heads·head_dim;
  bytes = dense weights + experts touched by B tokens + KV read B·C·kv_bytes_per_token.
- LM head of T rows: FLOPs 2·hidden·vocab·T; bytes vocab·hidden weights + fp32 logits.
- embedding of T tokens: a gather of T rows (read + write).
MoE compute uses active parameters, MoE memory traffic the experts actually touched.

Units: seconds, bytes, FLOPs; `Device.tflops` in TFLOP/s, `Device.mem_bandwidth_gbs` in GB/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.cost.shape import LayerShape
from e2llm.specs.device import Device
from e2llm.specs.model import BYTES_PER_PARAM, ModelSpec


@dataclass(frozen=True, slots=True)
class Efficiency:
    """How much of its spec sheet an inference engine gets out of a device, and its fixed costs.

    `compute` and `memory` are fractions of the device's peak TFLOP/s and GB/s; the `*_call_s`
    fields are seconds paid per call whatever its size. `kv_traffic` is the bytes an engine moves
    per byte of KV it logically reads in a decode step (1 for fused/paged attention; eager PyTorch
    copies the cache on every step and expands it to all query heads, so it moves several times
    more). `attn_score_bytes` is the memory traffic per attention score when the engine
    materialises the score matrix (0 for flash attention): such an engine computes the whole
    n_heads x queries x keys matrix, masked entries included (T² per head for a T-token prefill).
    """

    compute: float
    memory: float
    layer_call_s: float
    head_call_s: float
    moe_call_s: float = 0.0  # extra per MoE layer call: routing, top-k, token dispatch
    expert_call_s: float = 0.0  # extra per distinct expert touched in an MoE layer call
    kv_traffic: float = 1.0
    attn_score_bytes: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.compute <= 1 and 0 < self.memory <= 1):
            raise ValueError(f"efficiency fractions must be in (0, 1]: {self.compute}, {self.memory}")
        fixed = (
            self.layer_call_s,
            self.head_call_s,
            self.moe_call_s,
            self.expert_call_s,
            self.attn_score_bytes,
        )
        if min(fixed) < 0 or self.kv_traffic < 1:
            raise ValueError(f"negative call cost or kv_traffic < 1 in {self}")


# llama.cpp-class engines on edge GPUs / Apple silicon / Jetson (the method's testbed engine).
# Not fitted here (no edge measurements in the repository): set from published llama.cpp Metal
# results of Llama-3.1-8B Q4_K_M (4.9 GB): M1 Max (400 GB/s, 10.4 TFLOPS) tg128 46 tok/s = 57%
# of bandwidth, pp512 500 tok/s = 77% of FP32 peak; M4 (120 GB/s, 4.3 TFLOPS) tg128 21 tok/s =
# 85%, pp512 225 tok/s = 84% (github.com/brand-o/normiebench issues 40 and 3), and llama.cpp's
# Apple-silicon table (ggml-org/llama.cpp discussion 4167: M2 Max 7B Q4_0 ≈ 60-65% of 400 GB/s).
# CUDA peaks in the presets count tensor cores, which llama.cpp's quantised kernels use less
# fully, hence the lower compute fraction. Per layer call ~30 µs (one graph node per op, no
# Python; a 32-layer decode step pays ~1 ms).
LLAMA_CPP = Efficiency(compute=0.6, memory=0.65, layer_call_s=30e-6, head_call_s=30e-6)

# Eager PyTorch + transformers on a data-centre GPU, fitted to the H200 bf16 per-layer
# measurements in ../shared/reference/measured/ (`benchmarks/cost_vs_measured.py --fit`, results
# in benchmarks/RESULTS.md): ~0.5 ms per layer call (Python + ~20 kernel launches), GEMMs at
# ~75% of peak, weight streaming at ~82%, decode moving the KV cache ~9x per step (the
# DynamicCache concatenation copies it, GQA expansion copies it again per query head).
# transformers' eager MoE (a Python loop over the hit experts with a host sync) adds ~0.75 ms per
# MoE layer call.
EAGER_TORCH = Efficiency(
    compute=0.75,
    memory=0.82,
    layer_call_s=0.5e-3,
    head_call_s=0.08e-3,
    moe_call_s=0.75e-3,
    expert_call_s=2.5e-6,
    kv_traffic=9.0,
)

# The default for a device without a profile: edge devices running a llama.cpp-class engine, as
# in the method's testbed. Devices that run e2llm's own PyTorch runtime should be profiled
# (`e2llm profile`); EAGER_TORCH is the roofline stand-in for a GPU fog server running it.
DEFAULT = LLAMA_CPP


class RooflineTimes:
    """`DeviceTimes` of `device` running `model`, from the device's peak numbers and `eff`."""

    def __init__(self, device: Device, model: ModelSpec, eff: Efficiency = DEFAULT):
        if device.tflops <= 0 or device.mem_bandwidth_gbs <= 0:
            raise ValueError(f"device {device.name!r} needs positive tflops and mem_bandwidth_gbs")
        self.device = device
        self.model = model
        self.eff = eff
        self._flops_per_s = device.tflops * 1e12 * eff.compute
        self._bytes_per_s = device.mem_bandwidth_gbs * 1e9 * eff.memory
        m = model
        self._shape = LayerShape.of(m)
        wb = BYTES_PER_PARAM[m.weight_precision]
        ffn_width = m.intermediate * (m.experts_per_token if m.is_moe else 1)
        # activations written and read per token in one layer (bf16): residual/norm/attention
        # in and out, q/k/v, and the gated FFN's gate, up and product.
        self._act_bytes_per_token = 2.0 * (
            8 * m.hidden + 2 * (m.n_heads + 2 * m.n_kv_heads) * m.head_dim + 4 * ffn_width
        )
        self._layer_call = eff.layer_call_s + (eff.moe_call_s if m.is_moe else 0.0)
        self._head_flops_per_token = 2.0 * m.hidden * m.vocab
        self._head_weight_bytes = m.vocab * m.hidden * wb
        self._logit_bytes_per_token = m.vocab * 4.0
        self._embed_row_bytes = m.hidden * wb

    def _roof(self, flops: float, n_bytes: float) -> float:
        return max(flops / self._flops_per_s, n_bytes / self._bytes_per_s)

    def layer_prefill_s(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        s, eff = self._shape, self.eff
        ctx = s.prefill_context(tokens)
        touched = s.experts_touched(tokens)
        flops = 2.0 * s.active_params * tokens + 4.0 * tokens * ctx * s.attn_width
        n_bytes = (
            s.dense_bytes
            + touched * s.expert_bytes
            + tokens * (self._act_bytes_per_token + s.kv_bytes_per_token)
            + eff.attn_score_bytes * s.n_heads * tokens * tokens
        )
        return self._layer_call + eff.expert_call_s * touched + self._roof(flops, n_bytes)

    def layer_decode_s(self, batch: int, context: int) -> float:
        if batch <= 0:
            return 0.0
        s, eff = self._shape, self.eff
        kv_tokens = s.kv_tokens(max(context, 1))
        touched = s.experts_touched(batch)
        flops = 2.0 * s.active_params * batch + 4.0 * batch * kv_tokens * s.attn_width
        n_bytes = (
            s.dense_bytes
            + touched * s.expert_bytes
            + batch * self._act_bytes_per_token
            + eff.kv_traffic * batch * kv_tokens * s.kv_bytes_per_token
            + eff.attn_score_bytes * s.n_heads * batch * kv_tokens
        )
        return self._layer_call + eff.expert_call_s * touched + self._roof(flops, n_bytes)

    def head_s(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        flops = self._head_flops_per_token * tokens
        n_bytes = self._head_weight_bytes + tokens * self._logit_bytes_per_token
        return self.eff.head_call_s + self._roof(flops, n_bytes)

    def embed_s(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return self.eff.head_call_s + 2.0 * tokens * self._embed_row_bytes / self._bytes_per_s

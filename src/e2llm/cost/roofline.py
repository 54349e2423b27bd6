"""Roofline timing of one device from its spec sheet: compute- or memory-bound, plus a fixed cost.

Every call (one decoder layer, the LM head, the embedding) costs

    t = call overhead + max(FLOPs / (tflops * compute), bytes / (bandwidth * memory))

A prompt may run as several such calls (micro-batches, `Efficiency.prefill_ubatch`).
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
from e2llm.specs.model_spec import BYTES_PER_PARAM, ModelSpec
from e2llm.specs.units import GB


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
    `prefill_ubatch` > 0 runs a longer prompt as micro-batches of that many tokens (llama.cpp's
    n_ubatch), each a full layer call that re-reads the weights it touches and attends to the KV
    of the chunks before it. `prefill_expert_call_s` is paid per expert a prompt call touches but
    not by decode steps: llama.cpp's MoE prompt kernels run each hit expert's token group as its
    own (padded) matmul tile set, while decode runs one fused mat-vec kernel over the experts.
    """

    compute: float
    memory: float
    layer_call_s: float
    head_call_s: float
    moe_call_s: float = 0.0  # extra per MoE layer call: routing, top-k, token dispatch
    expert_call_s: float = 0.0  # extra per distinct expert touched in an MoE layer call
    prefill_expert_call_s: float = 0.0  # extra per expert touched in a prompt (not decode) call
    kv_traffic: float = 1.0
    attn_score_bytes: float = 0.0
    prefill_ubatch: int = 0  # prompt tokens per layer call (llama.cpp n_ubatch); 0: whole prompt

    def __post_init__(self) -> None:
        if not (0 < self.compute <= 1 and 0 < self.memory <= 1):
            raise ValueError(f"efficiency fractions must be in (0, 1]: {self.compute}, {self.memory}")
        fixed = (
            self.layer_call_s,
            self.head_call_s,
            self.moe_call_s,
            self.expert_call_s,
            self.prefill_expert_call_s,
            self.attn_score_bytes,
        )
        if min(fixed) < 0 or self.kv_traffic < 1 or self.prefill_ubatch < 0:
            raise ValueError(f"negative call cost or kv_traffic < 1 in {self}")


# llama.cpp-class engines on edge hardware (the method's testbed engine), pooled over vendors:
# fitted (`benchmarks/calibrate_edge.py --fit`, mean |log error|) to 17 published llama.cpp
# prompt-processing / generation speeds on Apple silicon, GeForce and Jetson AGX Orin
# (cost/edge_evidence.py has each number and its URL; benchmarks/RESULTS.md "Edge calibration"
# the table): quantised matmuls at ~63% of the FP16 peak of the presets (tensor cores on NVIDIA,
# the ALUs on Apple), weights streamed at ~54% of peak bandwidth, 20 µs per layer call, prompts
# in llama.cpp's default 512-token micro-batches, and 37 µs per expert a prompt micro-batch
# touches (MoE prompt processing runs each hit expert's tile through its own grouped matmul;
# decode uses fused mat-vec kernels and pays nothing per expert). Median |error| over the 17
# points: 15% (Metal 11%, CUDA 2%, Jetson 49%). It is the fallback for devices of unknown
# vendor; devices of a known vendor class get the per-class fit (cost/edge.py), which is closer.
LLAMA_CPP = Efficiency(
    compute=0.63,
    memory=0.54,
    layer_call_s=20e-6,
    head_call_s=20e-6,
    prefill_expert_call_s=37e-6,
    prefill_ubatch=512,
)

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
# in the method's testbed (`build_cost_model` refines it by vendor class, cost/edge.py). Devices
# that run e2llm's own PyTorch runtime should be profiled (`e2llm profile`); EAGER_TORCH is the
# roofline stand-in for a GPU fog server running it.
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
        self._bytes_per_s = device.mem_bandwidth_gbs * GB * eff.memory
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
        u = self.eff.prefill_ubatch
        if not u or tokens <= u:
            return self._prefill_chunk_s(0, tokens)
        # llama.cpp runs a long prompt as micro-batches of `u` tokens, each a full pass over the
        # layer: every chunk pays the call overheads and re-reads the weights it touches, and
        # attends to the KV of the chunks before it.
        full, rest = divmod(tokens, u)
        s = sum(self._prefill_chunk_s(i * u, u) for i in range(full))
        return s + (self._prefill_chunk_s(full * u, rest) if rest else 0.0)

    def _prefill_chunk_s(self, done: int, tokens: int) -> float:
        """One layer call over prompt tokens done+1 .. done+tokens, the first `done` already in
        the cache (their KV is read once by the chunk's fused attention)."""
        s, eff = self._shape, self.eff
        keys = s.prefill_context(done + tokens) * (done + tokens)
        if done:
            keys -= s.prefill_context(done) * done
        touched = s.experts_touched(tokens)
        flops = 2.0 * s.active_params * tokens + 4.0 * keys * s.attn_width
        n_bytes = (
            s.dense_bytes
            + touched * s.expert_bytes
            + tokens * (self._act_bytes_per_token + s.kv_bytes_per_token)
            + (s.kv_tokens(done) * s.kv_bytes_per_token if done else 0.0)
            + eff.attn_score_bytes * s.n_heads * tokens * (tokens + done)
        )
        per_expert = eff.expert_call_s + eff.prefill_expert_call_s
        return self._layer_call + per_expert * touched + self._roof(flops, n_bytes)

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

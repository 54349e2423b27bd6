"""Roofline timing: work per call, monotonicity, MoE and sliding-window handling."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest
from costkit import GPT_OSS_20B, LLAMA_8B, M1, RTX_5070, SMOLLM_135M

from e2llm.cost.roofline import EAGER_TORCH, LLAMA_CPP, Efficiency, RooflineTimes
from e2llm.cost.shape import LayerShape
from e2llm.specs.device import Device

NO_OVERHEAD = Efficiency(compute=1.0, memory=1.0, layer_call_s=0.0, head_call_s=0.0)


def test_dense_decode_batch1_is_weight_read_at_bandwidth() -> None:
    t = RooflineTimes(M1, LLAMA_8B, NO_OVERHEAD)
    expected = LLAMA_8B.layer_weight_bytes / (M1.mem_bandwidth_gbs * 1e9)
    got = t.layer_decode_s(1, 1)
    assert got == pytest.approx(expected, rel=0.01)  # KV of 1 token and activations are noise


def test_large_prefill_is_compute_bound_on_active_params() -> None:
    t = RooflineTimes(RTX_5070, LLAMA_8B, NO_OVERHEAD)
    tokens = 4096
    ctx = (tokens + 1) / 2
    flops = 2 * LLAMA_8B.layer_active_params * tokens + 4 * tokens * ctx * 32 * 128
    assert t.layer_prefill_s(tokens) == pytest.approx(flops / (RTX_5070.tflops * 1e12))


def test_efficiency_and_overhead_enter_as_documented() -> None:
    eff = Efficiency(compute=0.5, memory=0.25, layer_call_s=1e-3, head_call_s=2e-3)
    base = RooflineTimes(M1, LLAMA_8B, NO_OVERHEAD)
    t = RooflineTimes(M1, LLAMA_8B, eff)
    # decode at batch 1 is memory-bound: 4x slower memory, plus the fixed call cost
    assert t.layer_decode_s(1, 1) == pytest.approx(1e-3 + 4 * base.layer_decode_s(1, 1))
    assert t.head_s(1) == pytest.approx(2e-3 + 4 * base.head_s(1))


def test_moe_compute_from_active_params_memory_from_touched_experts() -> None:
    m = replace(GPT_OSS_20B, expert_precision="bf16", sliding_window=0, sliding_layers=())
    assert m.layer_active_params < m.layer_params / 5  # 4 of 32 experts active
    t = RooflineTimes(RTX_5070, m, NO_OVERHEAD)
    # compute-bound prefill: FLOPs come from the active parameters only
    tokens = 8192
    attn = 4 * tokens * (tokens + 1) / 2 * m.n_heads * m.head_dim
    flops = 2 * m.layer_active_params * tokens + attn
    assert t.layer_prefill_s(tokens) == pytest.approx(flops / (RTX_5070.tflops * 1e12))
    # memory: one token reads the dense part + 4 experts; a large batch reads (almost) all 32
    one = LayerShape.of(m).read_bytes(1)
    many = LayerShape.of(m).read_bytes(256)
    assert many == pytest.approx(m.layer_weight_bytes, rel=1e-6)
    assert one == pytest.approx(m.layer_weight_bytes - 28 * m.expert_params * 2)
    assert t.layer_decode_s(64, 1) > 3 * t.layer_decode_s(1, 1)


def test_experts_touched_formula() -> None:
    assert LayerShape.of(LLAMA_8B).experts_touched(100) == 0.0
    assert LayerShape.of(GPT_OSS_20B).experts_touched(1) == pytest.approx(4.0)
    assert LayerShape.of(GPT_OSS_20B).experts_touched(2) == pytest.approx(32 * (1 - (28 / 32) ** 2))
    assert LayerShape.of(GPT_OSS_20B).experts_touched(10_000) == pytest.approx(32.0)


def test_sliding_window_layers_attend_to_fewer_tokens() -> None:
    # full layers: (T+1)/2 keys per query; half the layers capped at a 128-token window
    assert LayerShape.of(LLAMA_8B).prefill_context(4096) == pytest.approx(4097 / 2)
    sliding = (128 * 129 / 2 + (4096 - 128) * 128) / 4096
    assert LayerShape.of(GPT_OSS_20B).prefill_context(4096) == pytest.approx((sliding + 4097 / 2) / 2)
    assert LayerShape.of(GPT_OSS_20B).prefill_context(100) == pytest.approx(101 / 2)
    assert LayerShape.of(GPT_OSS_20B).kv_tokens(4096) == pytest.approx((4096 + 128) / 2)
    assert LayerShape.of(LLAMA_8B).kv_tokens(4096) == 4096


@pytest.mark.parametrize("model", [LLAMA_8B, GPT_OSS_20B, SMOLLM_135M])
@pytest.mark.parametrize("eff", [LLAMA_CPP, EAGER_TORCH])
def test_times_are_monotone(model, eff) -> None:
    t = RooflineTimes(RTX_5070, model, eff)
    tokens = [1, 2, 16, 128, 512, 2048, 8192]
    pre = [t.layer_prefill_s(n) for n in tokens]
    assert all(a <= b for a, b in pairwise(pre))
    assert pre[-1] > pre[0]
    for ctx in (1, 512, 8192):
        dec = [t.layer_decode_s(b, ctx) for b in (1, 2, 4, 16, 64, 256)]
        assert all(a <= b for a, b in pairwise(dec))
        assert dec[-1] > dec[0]
    for batch in (1, 16, 64):
        dec = [t.layer_decode_s(batch, c) for c in (1, 128, 1024, 8192, 32768)]
        assert all(a <= b for a, b in pairwise(dec))
        assert dec[-1] > dec[0]
    heads = [t.head_s(n) for n in (1, 16, 256, 4096)]
    assert all(a <= b for a, b in pairwise(heads))
    assert t.embed_s(512) > t.embed_s(1) > 0


def test_zero_work_costs_nothing() -> None:
    t = RooflineTimes(M1, LLAMA_8B, LLAMA_CPP)
    assert t.layer_prefill_s(0) == t.layer_decode_s(0, 100) == t.head_s(0) == t.embed_s(0) == 0.0


def test_faster_device_is_faster() -> None:
    slow, fast = RooflineTimes(M1, LLAMA_8B), RooflineTimes(RTX_5070, LLAMA_8B)
    assert fast.layer_prefill_s(512) < slow.layer_prefill_s(512)
    assert fast.layer_decode_s(4, 512) < slow.layer_decode_s(4, 512)


def test_bad_efficiency_and_device_rejected() -> None:
    with pytest.raises(ValueError):
        Efficiency(compute=0.0, memory=0.5, layer_call_s=0.0, head_call_s=0.0)
    with pytest.raises(ValueError):
        Efficiency(compute=0.5, memory=1.5, layer_call_s=0.0, head_call_s=0.0)
    with pytest.raises(ValueError):
        Efficiency(compute=0.5, memory=0.5, layer_call_s=-1.0, head_call_s=0.0)
    with pytest.raises(ValueError):
        Efficiency(compute=0.5, memory=0.5, layer_call_s=0.0, head_call_s=0.0, kv_traffic=0.5)
    with pytest.raises(ValueError, match="dead"):
        RooflineTimes(Device(name="dead", memory_gb=1, tflops=0, mem_bandwidth_gbs=1), LLAMA_8B)

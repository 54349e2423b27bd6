"""ProfileTimes: the fit on its own shape, the scaling rules, and refusing far-off shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from costkit import GPT_OSS_20B, LLAMA_8B, SMOLLM_135M

from e2llm.cost.profile import Profile, ProfileFit, ProfileSamples, make_profile
from e2llm.cost.profile_times import ProfileTimes
from e2llm.cost.shape import LayerShape
from e2llm.errors import InputError
from e2llm.specs.model_spec import ModelSpec

SAMPLES = ProfileSamples(
    prefill=((128, 6e-4), (512, 8e-4), (2048, 1.8e-3), (4096, 3.5e-3)),
    decode=((1, 512, 5.9e-4), (16, 512, 6.0e-4), (64, 512, 9.1e-4), (16, 4096, 1.5e-3)),
    head=((1, 3.5e-4), (16, 3.5e-4), (64, 3.8e-4)),
)
BW_GBS = 4000.0


def layer_read_bytes(m: ModelSpec, tokens: int) -> float:
    return LayerShape.of(m).read_bytes(tokens)


def profile_of(model=LLAMA_8B, fit: ProfileFit | None = None) -> Profile:
    p = make_profile(
        device_name="gpu",
        torch_device="cuda",
        dtype="bf16",
        model=model,
        samples=SAMPLES,
        memory_bandwidth_gbs=BW_GBS,
    )
    return p if fit is None else replace(p, fit=fit)


FIT = ProfileFit(prefill=(5e-4, 7e-7, 1e-11), decode=(5.5e-4, 5e-6, 1.5e-8), head=(3e-4, 1e-6))


def test_same_shape_reproduces_the_fit() -> None:
    t = ProfileTimes(profile_of(fit=FIT), LLAMA_8B)
    assert t.layer_prefill_s(1000) == pytest.approx(FIT.prefill_s(1000))
    assert t.layer_decode_s(8, 2000) == pytest.approx(FIT.decode_s(8, 2000))
    assert t.head_s(16) == pytest.approx(FIT.head_s(16))
    # no embed curve: a gather of 2 x hidden x 2 bytes per token at the measured bandwidth
    assert t.embed_s(100) == pytest.approx(2 * 100 * 4096 * 2 / (BW_GBS * 1e9))
    assert t.layer_prefill_s(0) == t.layer_decode_s(0, 5) == t.head_s(0) == t.embed_s(0) == 0.0


def test_fit_from_samples_tracks_the_samples() -> None:
    t = ProfileTimes(profile_of(), LLAMA_8B)
    for tokens, s in SAMPLES.prefill:
        assert t.layer_prefill_s(tokens) == pytest.approx(s, rel=0.25)
    for b, c, s in SAMPLES.decode:
        assert t.layer_decode_s(b, c) == pytest.approx(s, rel=0.25)


def test_linear_terms_scale_with_active_params_and_weights_with_bytes() -> None:
    # the same shape in int8: same FLOPs, fewer weight bytes read per call
    planned = replace(LLAMA_8B, weight_precision="int8")
    t = ProfileTimes(profile_of(fit=FIT), planned)
    saved = (layer_read_bytes(LLAMA_8B, 1) - layer_read_bytes(planned, 1)) / (BW_GBS * 1e9)
    assert t.layer_decode_s(1, 100) == pytest.approx(FIT.decode_s(1, 100) - saved)
    # twice the FFN width: the per-token (linear) term grows by the active-parameter ratio
    wide = replace(LLAMA_8B, intermediate=2 * LLAMA_8B.intermediate)
    ratio = wide.layer_active_params / LLAMA_8B.layer_active_params
    tw = ProfileTimes(profile_of(fit=FIT), wide)
    extra = (layer_read_bytes(wide, 1) - layer_read_bytes(LLAMA_8B, 1)) / (BW_GBS * 1e9)
    a, b, c = FIT.prefill
    assert tw.layer_prefill_s(1000) == pytest.approx(a + b * 1000 * ratio + c * 1000 * 1000 + extra)


def test_attention_terms_scale_with_width_kv_and_sliding_window() -> None:
    fit = ProfileFit(prefill=(0.0, 0.0, 1e-10), decode=(0.0, 0.0, 1e-7), head=(1e-4, 0.0))
    base = ProfileTimes(profile_of(fit=fit), LLAMA_8B)
    # 2x the KV heads: decode's context term doubles (attention width unchanged)
    kv2 = ProfileTimes(profile_of(fit=fit), replace(LLAMA_8B, n_kv_heads=16))
    w = (layer_read_bytes(replace(LLAMA_8B, n_kv_heads=16), 1) - layer_read_bytes(LLAMA_8B, 1)) / (
        BW_GBS * 1e9
    )
    assert kv2.layer_decode_s(4, 4096) == pytest.approx(2 * base.layer_decode_s(4, 4096) + w, rel=1e-6)
    # every layer sliding with a 512 window: context capped at the window
    sliding = replace(LLAMA_8B, sliding_window=512, sliding_layers=tuple(range(32)))
    ts = ProfileTimes(profile_of(fit=fit), sliding)
    assert ts.layer_decode_s(4, 4096) == pytest.approx(base.layer_decode_s(4, 512))
    assert ts.layer_prefill_s(4096) < base.layer_prefill_s(4096) / 4


def test_dense_profile_times_moe_with_expert_reads() -> None:
    dense = replace(
        GPT_OSS_20B, n_experts=0, experts_per_token=0, intermediate=4 * 2880, expert_precision="bf16"
    )
    t = ProfileTimes(profile_of(model=dense, fit=FIT), GPT_OSS_20B)
    # more sequences route to more experts: decode grows faster than the dense fit's slope
    grow = t.layer_decode_s(32, 128) - t.layer_decode_s(1, 128)
    dense_grow = ProfileTimes(profile_of(model=dense, fit=FIT), dense)
    assert grow > dense_grow.layer_decode_s(32, 128) - dense_grow.layer_decode_s(1, 128)


def test_shrinking_model_never_below_own_weight_read() -> None:
    # measured 50 µs, below the profiled layer's weight read (436 MB at 4 TB/s = 109 µs): the
    # int8/q4 delta would make the call negative; it is floored at the planned weight read
    fit = ProfileFit(prefill=(5e-5, 0.0, 0.0), decode=(5e-5, 0.0, 0.0), head=(1e-5, 0.0))
    small = replace(LLAMA_8B, intermediate=LLAMA_8B.intermediate // 8, weight_precision="q4")
    t = ProfileTimes(profile_of(fit=fit), small)
    assert t.layer_decode_s(1, 1) == pytest.approx(layer_read_bytes(small, 1) / (BW_GBS * 1e9))
    # the profiled shape itself is never floored: exactly the fit, even below its weight read
    assert ProfileTimes(profile_of(fit=fit), LLAMA_8B).layer_decode_s(1, 1) == pytest.approx(5e-5)


def test_far_off_shape_refused_naming_both() -> None:
    with pytest.raises(InputError) as e:
        ProfileTimes(profile_of(model=SMOLLM_135M), LLAMA_8B)
    msg = str(e.value)
    assert "smollm2-135m" in msg and "llama-3.1-8b" in msg and "active params" in msg
    assert msg.startswith("<profile>: ")  # the profile file (here: not read from a file)

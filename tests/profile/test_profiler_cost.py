"""A measured profile feeds the cost model: `profile:` in a cluster entry replaces the roofline."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2llm.cost.build import build_cost_model
from e2llm.cost.profile import load_profile
from e2llm.errors import InputError
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model, with_precision


def _cluster(tmp_path: Path, profile: Path | None) -> Path:
    extra = f", profile: {profile}" if profile else ""
    path = tmp_path / "cluster.yaml"
    # Spec numbers of a data-centre GPU: the roofline is then far faster than any CPU profile,
    # so "the profile was used" cannot pass or fail by coincidence of the machine's speed.
    path.write_text(
        "devices:\n"
        f"  - {{name: a, memory_gb: 4, tflops: 1000, mem_bandwidth_gbs: 5000{extra}}}\n"
        "  - {name: b, memory_gb: 4, tflops: 1000, mem_bandwidth_gbs: 5000}\n"
        "network: {bandwidth_mbps: 1000, latency_ms: 0.1}\n"
    )
    return path


def test_profile_replaces_the_roofline(tmp_path: Path, quick_profile: Path) -> None:
    model = with_precision(load_model("smollm2-135m"), "fp32")
    cost = build_cost_model(model, load_cluster(_cluster(tmp_path, quick_profile)))
    fit = load_profile(quick_profile).fit
    # Device a is timed from the measured curves (same model: no scaling), b from its specs.
    for tokens in (16, 256, 1024):
        assert cost.times["a"].layer_prefill_s(tokens) == pytest.approx(fit.prefill_s(tokens), rel=1e-6)
    assert cost.times["a"].layer_decode_s(4, 512) == pytest.approx(fit.decode_s(4, 512), rel=1e-6)
    assert cost.times["a"].head_s(1) == pytest.approx(fit.head_s(1), rel=1e-6)
    assert cost.times["a"].layer_prefill_s(256) != pytest.approx(
        cost.times["b"].layer_prefill_s(256), rel=0.05
    )
    roofline = build_cost_model(model, load_cluster(_cluster(tmp_path, None)))
    assert cost.stage_prefill_s("a", 10, 256) != pytest.approx(
        roofline.stage_prefill_s("a", 10, 256), rel=0.05
    )


def test_profile_of_another_model_shape_is_refused_naming_both(tmp_path: Path, quick_profile: Path) -> None:
    cluster = load_cluster(_cluster(tmp_path, quick_profile))
    with pytest.raises(InputError) as err:
        build_cost_model(load_model("llama-3.1-70b"), cluster)
    message = str(err.value)
    assert str(quick_profile.name) in message and "llama-3.1-70b" in message and "smollm2-135m" in message

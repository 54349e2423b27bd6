"""build_cost_model: profile where the cluster names one, roofline elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from costkit import LLAMA_8B, M1, RTX_5070, cluster

from e2llm.cost.build import build_cost_model
from e2llm.cost.profile import ProfileSamples, load_profile, make_profile, save_profile
from e2llm.cost.profile_times import ProfileTimes
from e2llm.cost.roofline import EAGER_TORCH, RooflineTimes
from e2llm.errors import InputError
from e2llm.specs.device import Cluster, Device

SAMPLES = ProfileSamples(
    prefill=((128, 0.01), (512, 0.05), (1024, 0.11)),
    decode=((1, 512, 0.004), (4, 512, 0.006), (16, 512, 0.015)),
    head=((1, 0.02), (16, 0.03)),
)


def write_profile(path: Path) -> Path:
    p = make_profile(
        device_name="laptop",
        torch_device="cpu",
        dtype="fp32",
        model=LLAMA_8B,
        samples=SAMPLES,
        memory_bandwidth_gbs=200.0,
    )
    save_profile(p, path)
    return path


def with_profile(d: Device, path: str) -> Device:
    return Device(d.name, d.memory_gb, d.tflops, d.mem_bandwidth_gbs, profile=path)


def test_roofline_without_profile_profile_with_one(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "p.json")
    c = cluster(RTX_5070, with_profile(M1, str(path)))
    cm = build_cost_model(LLAMA_8B, c, efficiency=EAGER_TORCH)
    assert isinstance(cm.times["dev1"], RooflineTimes)
    assert cm.times["dev1"].eff == EAGER_TORCH
    assert isinstance(cm.times["dev2"], ProfileTimes)
    assert cm.stage_decode_s("dev2", 1, 4, 512) == pytest.approx(0.006, rel=0.2)


def test_relative_profile_path_is_relative_to_cluster_file(tmp_path: Path) -> None:
    write_profile(tmp_path / "p.json")
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text("devices: []\n")
    c = cluster(with_profile(M1, "p.json"))
    c = Cluster(c.devices, c.default_link, source=str(cluster_file))
    assert isinstance(build_cost_model(LLAMA_8B, c).times["dev2"], ProfileTimes)


def test_shared_profile_loaded_once_and_preloaded_used(tmp_path: Path) -> None:
    path = str(write_profile(tmp_path / "p.json"))
    c = cluster(with_profile(M1, path), with_profile(Device("dev3", 12, 2.6, 68.25), path))
    cm = build_cost_model(LLAMA_8B, c)
    t2, t3 = cm.times["dev2"], cm.times["dev3"]
    assert isinstance(t2, ProfileTimes) and isinstance(t3, ProfileTimes)
    assert t2.profile is t3.profile
    # a preloaded profile is used as is, even when the file is gone
    pre = load_profile(path)
    Path(path).unlink()
    cm2 = build_cost_model(LLAMA_8B, c, profiles={path: pre})
    t = cm2.times["dev2"]
    assert isinstance(t, ProfileTimes) and t.profile is pre


def test_missing_profile_is_input_error(tmp_path: Path) -> None:
    c = cluster(with_profile(M1, str(tmp_path / "missing.json")))
    with pytest.raises(InputError, match=r"missing\.json: profile file not found"):
        build_cost_model(LLAMA_8B, c)

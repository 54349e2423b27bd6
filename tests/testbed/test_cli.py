"""`e2llm testbed`: hosts that cannot run one get one line and exit 2; the state file round-trips."""

from __future__ import annotations

import ipaddress
import os
import platform

import pytest

from e2llm.cli import main
from e2llm.specs.cluster_file import cluster_from_dict
from e2llm.testbed import host
from e2llm.testbed.cgroups import CgroupLayout
from e2llm.testbed.state import NodeProcess, TestbedState, load, save
from e2llm.testbed.topology import TestbedOptions, plan_topology

CLUSTER_YAML = """\
devices:
  - {name: a, memory_gb: 0.5, tflops: 1, mem_bandwidth_gbs: 10}
network: {bandwidth_mbps: 100, latency_ms: 0.1}
"""


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda m: m.setattr(platform, "system", lambda: "Darwin"), "needs Linux"),
        (lambda m: m.setattr(os, "geteuid", lambda: 1000), "needs root"),
        (lambda m: m.setattr(host.shutil, "which", lambda tool: None), "needs ip and tc"),
    ],
)
@pytest.mark.parametrize("action", ["up", "status", "down"])
def test_an_unsuitable_host_gets_one_line_and_exit_2(tmp_path, capsys, monkeypatch, patch, message, action):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(CLUSTER_YAML)
    patch(monkeypatch)
    assert main(["testbed", action, str(cluster)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2llm testbed: error: ") and message in err
    assert len(err.splitlines()) == 1


def test_down_without_a_testbed_is_one_line(tmp_path, capsys, monkeypatch):
    if host.unsupported_reason():
        pytest.skip(f"no testbed on this host: {host.unsupported_reason()}")
    monkeypatch.setenv("E2LLM_TESTBED_DIR", str(tmp_path / "state"))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(CLUSTER_YAML)
    assert main(["testbed", "down", str(cluster)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no testbed of this cluster is up" in err and len(err.splitlines()) == 1


def test_state_round_trips_and_a_broken_one_is_one_line(tmp_path):
    cluster = cluster_from_dict(
        {"devices": [{"name": "a", "memory_gb": 1, "tflops": 1, "mem_bandwidth_gbs": 1}],
         "network": {"bandwidth_mbps": 100, "latency_ms": 0.1}},
        "c.yaml",
    )  # fmt: skip
    topo = plan_topology(
        cluster, TestbedOptions(scale=0.5), "ab12", ipaddress.IPv4Network("198.18.0.0/24"), 2
    )
    state = TestbedState(
        cluster_path="/x/c.yaml",
        options=TestbedOptions(scale=0.5),
        topology=topo,
        layout=CgroupLayout(1, "/cg/cpu", "/cg/memory"),
        folder=str(tmp_path),
        temp_dir="/tmp/e2tb-ab12",
        gcs_port=40000,
        processes=(NodeProcess("", 123, 456, "/x/head.log"),),
    )
    save(state)
    assert load(tmp_path, "c.yaml") == state
    assert state.address == "198.18.0.1:40000"
    assert state.env["RAY_AUTH_MODE"] == "token" and state.env["RAY_AUTH_TOKEN_PATH"].endswith("auth_token")
    (tmp_path / "state.json").write_text('{"cluster_path": 3}')
    with pytest.raises(ValueError, match="not a testbed state file"):
        load(tmp_path, "c.yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "0"], "--scale: must be a positive number"),
        (["--memory-scale", "-1"], "--memory-scale: must be a positive number"),
        (["--cpu-budget", "99"], "--cpu-budget: must be in (0, "),
    ],
)
def test_bad_testbed_options_name_their_flag_and_build_nothing(tmp_path, capsys, monkeypatch, args, message):
    if host.unsupported_reason():
        pytest.skip(f"no testbed on this host: {host.unsupported_reason()}")
    monkeypatch.setenv("E2LLM_TESTBED_DIR", str(tmp_path / "state"))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(CLUSTER_YAML)
    assert main(["testbed", "up", str(cluster), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "state").exists()


def test_exec_in_a_device_the_testbed_lacks_is_one_line(tmp_path):
    from e2llm.testbed import control

    cluster = cluster_from_dict(
        {"devices": [{"name": "a", "memory_gb": 1, "tflops": 1, "mem_bandwidth_gbs": 1}],
         "network": {"bandwidth_mbps": 100, "latency_ms": 0.1}},
        "c.yaml",
    )  # fmt: skip
    topo = plan_topology(cluster, TestbedOptions(), "ab12", ipaddress.IPv4Network("198.18.0.0/24"), 2)
    state = TestbedState(
        "/x/c.yaml", TestbedOptions(), topo, CgroupLayout(1, "/cg/cpu", "/cg/m"), str(tmp_path), "/t"
    )
    with pytest.raises(ValueError, match=r"^zz: not a device of this testbed \(devices: a\)$"):
        control.device_command(state, "zz", ["true"])

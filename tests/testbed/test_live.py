"""A real testbed on this host: `up`, what a device sees from inside, shaped links, `down` with
nothing left behind (namespaces, links, cgroups, processes, files). Needs Linux + root."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2llm.cost.profile import load_profile
from e2llm.specs.cluster_file import load_cluster
from e2llm.testbed import host
from e2llm.testbed.lifecycle import folder_of, leftovers, load_state

pytestmark = pytest.mark.slow

CLUSTER_YAML = """\
devices:
  - {name: fast, memory_gb: 1.0, tflops: 0.2, mem_bandwidth_gbs: 20}
  - {name: slow, memory_gb: 0.75, tflops: 0.05, mem_bandwidth_gbs: 20}
network:
  bandwidth_mbps: 200
  latency_ms: 0.1
  links: [{a: fast, b: slow, bandwidth_mbps: 40}]
"""
E2LLM = str(Path(sys.executable).parent / "e2llm")
# A TCP receiver that prints Mbit/s from its first byte to the sender's close.
RECEIVER = """
import socket, sys, time
srv = socket.create_server((sys.argv[1], 5201)); print("ready", flush=True)
conn, _ = srv.accept(); n = 0; t0 = None
while (b := conn.recv(1 << 16)):
    t0 = t0 or time.perf_counter(); n += len(b)
print(n * 8 / (time.perf_counter() - t0) / 1e6, flush=True)
"""
SENDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], 5201)); s.sendall(b"x" * int(sys.argv[2])); s.close()
"""


def run_testbed(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([E2LLM, "testbed", *args], capture_output=True, text=True, env=env, timeout=300)


def measured_mbps(cluster: Path, env: dict[str, str], src: str, dst: str, dst_address: str) -> float:
    """TCP goodput from device `src` to device `dst` over the testbed's link."""
    recv = subprocess.Popen(
        [E2LLM, "testbed", "exec", str(cluster), dst, "--", sys.executable, "-c", RECEIVER, dst_address],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        send = run_testbed(
            "exec", str(cluster), src, "--", sys.executable, "-c", SENDER, dst_address, "4000000", env=env
        )
        assert send.returncode == 0, send.stderr
        out, _ = recv.communicate(timeout=60)
        return float(out.strip())
    finally:
        recv.kill()
        recv.wait()


def test_up_shapes_quotas_and_down_leaves_nothing(testbed_host, tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER_YAML)
    env = {**os.environ, "E2LLM_TESTBED_DIR": str(tmp_path / "state")}
    monkeypatch.setenv("E2LLM_TESTBED_DIR", env["E2LLM_TESTBED_DIR"])  # for load_state here
    try:
        started = time.monotonic()
        up = run_testbed("up", str(cluster), "--scale", "0.5", env=env)
        assert up.returncode == 0, up.stderr + up.stdout
        state = load_state(cluster)
        took_up = time.monotonic() - started
        topo = state.topology
        assert stat.S_IMODE(os.stat(state.token_path).st_mode) == 0o600

        status = run_testbed("status", str(cluster), "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert report["healthy"] and {d["name"] for d in report["devices"] if d["in_ray"]} == {"fast", "slow"}
        fast, slow = topo.device("fast"), topo.device("slow")
        assert fast.cpu_cores == pytest.approx(2 * slow.cpu_cores)  # relative speed 1 : 0.5

        # Inside a device: its own address only, its cgroups, its quota.
        inside = run_testbed(
            "exec", str(cluster), "slow", "--", "sh", "-c", "ip -o -4 addr; cat /proc/self/cgroup", env=env
        )
        assert inside.returncode == 0, inside.stderr
        assert f"inet {slow.address}/24" in inside.stdout and topo.head_address not in inside.stdout
        assert f"/{topo.cgroup}/{slow.cgroup}" in inside.stdout
        quota = Path(state.layout.cpu_parent, topo.cgroup, slow.cgroup, "cpu.cfs_quota_us")
        if state.layout.version == 1:
            assert int(quota.read_text()) == slow.cpu_quota_us

        # The fast-slow link is 40 Mbit/s x 0.5: TCP never gets more than that (a busy host can
        # only make it slower, so this bound cannot flake).
        mbps = measured_mbps(cluster, env, "fast", "slow", slow.address)
        assert 0 < mbps <= 20 * 1.05
        print(f"\nup {took_up:.1f} s; fast->slow {mbps:.1f} Mbit/s (shaped at 20)")

        # Profiles taken inside the devices: the cluster file the planner then reads.
        out = tmp_path / "profiles"
        prof = run_testbed("profile", str(cluster), "--out", str(out), "--quick", env=env)
        assert prof.returncode == 0, prof.stderr
        emulated = load_cluster(out / "cluster.yaml")
        assert [d.profile for d in emulated.devices] == [str(out / "fast.json"), str(out / "slow.json")]
        assert emulated.link("fast", "slow").bandwidth_mbps == 20  # as shaped: 40 x --scale 0.5
        assert 0 < emulated.default_link.latency_ms < 5  # the bridge's, measured
        assert emulated.device("slow").memory_gb == 0.75
        fast_p, slow_p = (load_profile(out / f"{n}.json").fit for n in ("fast", "slow"))
        # Half the CPU quota: the slow device's prompt layers take longer (~2x).
        assert slow_p.prefill_s(256) > fast_p.prefill_s(256)
    finally:
        started = time.monotonic()
        down = run_testbed("down", str(cluster), env=env)
        took_down = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    print(f"down {took_down:.1f} s")
    assert leftovers(state) == []
    assert not any(ns.startswith(f"e2tb-{topo.testbed_id}-") for ns in host.namespaces())
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"e2tb{topo.testbed_id}" not in links
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert state.temp_dir not in ps and topo.head_address not in ps
    assert not folder_of(cluster).exists()
    again = run_testbed("down", str(cluster), env=env)
    assert again.returncode == 2 and "no testbed of this cluster is up" in again.stderr

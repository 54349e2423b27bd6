"""Profiles measured inside the emulated devices, and the cluster file that uses them.

`e2llm profile` runs in each device in turn (its namespace, CPU quota and memory limit; one
torch thread, as a stage actor), so the cost model's view of each device is what that device
does, not a spec sheet. The profiled stack has `PROFILE_LAYERS` layers: the CPU quota is handed
out per 10 ms period, so a call much shorter than the period can run unthrottled on a fresh
period's budget; with 8 layers a timed call lasts about as long as a serving stage's (7-15
layers), and is throttled as that is. Devices are profiled one after the other: each sees the
host as it does when serving, where the quotas keep the devices from competing.

`write_cluster` then records the cluster as the testbed emulates it (`topology.emulated_cluster`):
scaled memory and bandwidths, the bridge's latency measured from inside a device, and the
profiles.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from e2llm.specs.cluster_file import cluster_to_dict, load_cluster
from e2llm.testbed.control import device_command
from e2llm.testbed.host import TestbedError
from e2llm.testbed.state import TestbedState
from e2llm.testbed.topology import DeviceNode, emulated_cluster, safe_name

log = logging.getLogger(__name__)

PROFILE_LAYERS = 8
LATENCY_SAMPLES = 20
# One-way latency: half the median TCP connect time (SYN -> SYN-ACK) from a device to the head.
_CONNECT = """
import socket, statistics, sys, time
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    times.append(time.perf_counter() - t0)
print(statistics.median(times) / 2 * 1e3)
"""


def e2llm_executable() -> str:
    return str(Path(sys.executable).parent / "e2llm")


def run_inside(state: TestbedState, device: str, argv: list[str], timeout_s: float) -> str:
    """Run `argv` inside `device`; its stdout, or `TestbedError` with its stderr's tail."""
    cmd, env = device_command(state, device, argv)
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout_s)
    if done.returncode != 0:
        why = f"exit {done.returncode}"
        if done.returncode in (-9, 137):  # SIGKILL: what the memory cgroup's OOM killer sends
            why += " (killed: over the device's memory limit?)"
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        raise TestbedError(f"`{' '.join(argv[:2])} ...` failed inside {device}, {why}: {tail[0][-300:]}")
    return done.stdout


def bridge_latency_ms(state: TestbedState) -> float:
    """One-way latency between a device and the head over the bridge (median of connects)."""
    first = state.topology.devices[0].name
    argv = [
        sys.executable,
        "-c",
        _CONNECT,
        state.topology.head_address,
        str(state.gcs_port),
        str(LATENCY_SAMPLES),
    ]
    return float(run_inside(state, first, argv, timeout_s=120).strip())


ProfileCommand = Callable[[DeviceNode, Path], list[str]]  # (device, output file) -> argv


def e2llm_profile(model: str, quick: bool = False) -> ProfileCommand:
    """`e2llm profile` of `model` as a stage actor runs: one torch thread, `PROFILE_LAYERS`."""

    def argv(node: DeviceNode, out: Path) -> list[str]:
        return [
            e2llm_executable(), "profile", "--model", model, "--threads", "1",
            "--layers", str(PROFILE_LAYERS), "--name", f"testbed-{node.name}", "--out", str(out),
            *(["--quick"] if quick else []),
        ]  # fmt: skip

    return argv


def profile_devices(
    state: TestbedState, out: Path, command: ProfileCommand, progress: Callable[[str], None] = log.info
) -> dict[str, str]:
    """Run `command` inside every device in turn, each writing `out/<device>.json`; returns
    device -> file name. The last line of a command's output is reported as its summary."""
    files = {}
    for node in state.topology.devices:
        name = f"{safe_name(node.name)}.json"
        started = time.monotonic()
        output = run_inside(state, node.name, command(node, out / name), timeout_s=3600)
        took = time.monotonic() - started
        summary = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "")
        progress(f"profiled {node.name} ({node.cpu_cores:.2f} cores) in {took:.0f} s: {summary}")
        files[node.name] = name
    return files


def write_cluster(state: TestbedState, out: Path, profiles: dict[str, str], latency_ms: float) -> Path:
    cluster = emulated_cluster(load_cluster(state.cluster_path), state.options, latency_ms, profiles)
    path = out / "cluster.yaml"
    header = (
        f"# The testbed {state.topology.testbed_id} of {state.cluster_path}, as emulated: memory x "
        f"{state.options.memory_scale:g}, bandwidth x {state.options.scale:g}, the bridge's measured "
        f"latency, and profiles measured inside each device (e2llm testbed up --profile).\n"
    )
    path.write_text(header + yaml.safe_dump(cluster_to_dict(cluster), sort_keys=False))
    return path


def profile_testbed(
    state: TestbedState, out: Path, command: ProfileCommand, progress: Callable[[str], None] = log.info
) -> Path:
    """Profile every device with `command` and write `out/cluster.yaml`; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    latency = bridge_latency_ms(state)
    profiles = profile_devices(state, out, command, progress)
    path = write_cluster(state, out, profiles, round(latency, 3))
    progress(f"bridge latency {latency:.3f} ms one way; wrote {path}")
    return path

"""`up`, `down`, `leftovers`: build a testbed on this host and remove exactly what was built.

`up` plans the topology (pure, `topology.py`), records it, then builds: the network (`ip`/`tc`),
the cgroups, the Ray head, one worker node per device (all started at once), and waits until Ray
lists every device. Any failure on the way takes down what was built and re-raises.

`down` stops every node (SIGTERM to its process group, SIGKILL to whatever is still in the
testbed's cgroups after `STOP_GRACE_S`), deletes the namespaces (their veths go with them) and the
bridge, removes the cgroups, Ray's session files and the state folder. It only ever acts on names
and processes the state file lists — or processes inside the testbed's own cgroups, which only
the testbed's nodes (and commands run with `testbed exec`) can be in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from e2llm.errors import InputError
from e2llm.specs.cluster_file import load_cluster
from e2llm.testbed import cgroups, host, netcmds, raynodes
from e2llm.testbed.host import TestbedError
from e2llm.testbed.state import NodeProcess, TestbedState, load, save, state_file, state_root, write_secret
from e2llm.testbed.topology import TestbedOptions, pick_subnet, plan_topology, testbed_id

log = logging.getLogger(__name__)

GCS_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 3.0
Progress = Callable[[str], None]


def folder_of(cluster_path: str | Path) -> Path:
    return state_root() / testbed_id(str(Path(cluster_path).resolve()))


def require_host() -> None:
    reason = host.unsupported_reason()
    if reason:
        raise InputError("", reason)


def up(cluster_path: str | Path, options: TestbedOptions, progress: Progress = log.info) -> TestbedState:
    """Build the testbed of the cluster file; returns its state once every device's node is in."""
    require_host()
    path = Path(cluster_path)
    cluster = load_cluster(path)
    folder = folder_of(path)
    if state_file(folder).exists():
        raise InputError(
            str(path),
            f"a testbed of this cluster is already up ({folder}); take it down first: "
            f"e2llm testbed down {path}",
        )
    layout = cgroups.read_layout()
    assert layout is not None  # require_host checked
    tb_id = folder.name
    topology = plan_topology(cluster, options, tb_id, pick_subnet(host.host_networks()), os.cpu_count() or 1)
    need = sum(d.memory_limit_bytes for d in topology.devices)
    available = host.mem_available_bytes()
    if available is not None and need > available:
        raise InputError(
            str(path),
            f"the devices' memory limits add up to {need / 2**30:.1f} GiB but only "
            f"{available / 2**30:.1f} GiB is available; lower the memory scale",
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    write_secret(folder / "auth_token", secrets.token_hex(32))
    state = TestbedState(
        cluster_path=str(path.resolve()),
        options=options,
        topology=topology,
        layout=layout,
        folder=str(folder),
        temp_dir=f"/tmp/e2tb-{tb_id}",
    )
    save(state)
    started = time.monotonic()
    try:
        host.run_commands(netcmds.setup_commands(topology))
        cgroups.create(layout, topology)
        progress(f"network and cgroups of {len(topology.devices)} devices built; starting Ray")
        state = _start_nodes(state)
        cgroups.write(cgroups.quota_writes(layout, topology))
        _write_env(state)
    except BaseException:
        with contextlib.suppress(Exception):
            down(state, keep_logs=True)
        raise
    progress(f"testbed {tb_id} up in {time.monotonic() - started:.0f} s")
    return state


def _start_nodes(state: TestbedState) -> TestbedState:
    topo, ray = state.topology, raynodes.ray_executable()
    env = state.env
    ports = raynodes.HeadPorts(gcs=raynodes.free_port(), dashboard_agent=raynodes.free_port())
    state = replace(state, gcs_port=ports.gcs)
    logs = Path(state.folder) / "logs"
    head = raynodes.start(
        raynodes.head_command(ray, topo, ports, state.temp_dir),
        env,
        logs / "head.log",
        cgroups.procs_files(state.layout, topo, None),
    )
    state = _record(state, "", head.pid, logs / "head.log")
    deadline = time.monotonic() + GCS_TIMEOUT_S
    while not raynodes.gcs_listening(topo.head_address, ports.gcs):
        if head.poll() is not None or time.monotonic() > deadline:
            raise TestbedError(f"the Ray head did not start; see {logs / 'head.log'}")
        time.sleep(0.2)
    for node in topo.devices:
        log_path = logs / f"{node.cgroup}.log"
        proc = raynodes.start(
            raynodes.worker_command(ray, topo, node, ports.gcs, state.temp_dir),
            env,
            log_path,
            cgroups.procs_files(state.layout, topo, node),
        )
        state = _record(state, node.name, proc.pid, log_path)
    names = [d.name for d in topo.devices]
    alive = advertised(state, READY_TIMEOUT_S, names)
    missing = sorted(set(names) - alive)
    if missing:
        raise TestbedError(f"Ray nodes of {', '.join(missing)} did not join; see {logs}")
    return state


def _record(state: TestbedState, device: str, pid: int, log_path: Path) -> TestbedState:
    ticks = host.start_ticks(pid)
    if ticks is None:
        raise TestbedError(f"the Ray node of {device or 'the head'} exited at once; see {log_path}")
    state = replace(state, processes=(*state.processes, NodeProcess(device, pid, ticks, str(log_path))))
    save(state)
    return state


def _write_env(state: TestbedState) -> None:
    lines = [f"export {k}={v}" for k, v in state.env.items()]
    lines.append(f"export E2LLM_TESTBED_ADDRESS={state.address}")
    (Path(state.folder) / "env.sh").write_text("\n".join(lines) + "\n")


def advertised(state: TestbedState, timeout_s: float, wanted: list[str]) -> set[str]:
    """Devices some live Ray node of the testbed advertises, waiting up to `timeout_s` for all
    of `wanted` (in a probe process: this one stays out of Ray)."""
    cmd = [sys.executable, "-m", "e2llm.testbed.probe", state.address, str(timeout_s), *wanted]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, **state.env}, timeout=timeout_s + 60
        )
    except subprocess.TimeoutExpired:
        return set()
    try:
        return set(json.loads(done.stdout.strip().splitlines()[-1]))
    except (json.JSONDecodeError, IndexError):
        log.warning("testbed probe failed: %s", done.stderr.strip()[-500:])
        return set()


def node_pids(state: TestbedState) -> set[int]:
    """Every live process of the testbed: the recorded node leaders and all in its cgroups."""
    found = cgroups.pids(cgroups.all_dirs(state.layout, state.topology))
    found |= {p.pid for p in state.processes if host.start_ticks(p.pid) == p.start_ticks}
    return {pid for pid in found if host.start_ticks(pid) is not None}


def stop_nodes(state: TestbedState, grace_s: float = STOP_GRACE_S) -> None:
    leaders = [p for p in state.processes if host.start_ticks(p.pid) == p.start_ticks]
    for p in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while node_pids(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(50):  # SIGKILL what is left, until the cgroups are empty (forks may race)
        left = node_pids(state)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for p in state.processes:  # reap our own children (an in-process `up`)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, os.WNOHANG)


def down(state: TestbedState, keep_logs: bool = False) -> list[str]:
    """Remove the testbed; returns what could not be removed (empty: nothing left). With
    `keep_logs` (a failed `up`) the nodes' logs stay in the state folder, for the error's reader."""
    topo = state.topology
    stop_nodes(state)
    present = host.namespaces()
    ours = [d.netns for d in topo.devices if d.netns in present]
    links = [name for name in (topo.bridge, *(d.host_veth for d in topo.devices)) if host.link_exists(name)]
    for cmd in netcmds.teardown_commands(ours, []):
        host.run_quietly(cmd)
    links = [name for name in links if host.link_exists(name)]  # host veths went with their namespaces
    for cmd in netcmds.teardown_commands([], links):
        host.run_quietly(cmd)
    cgroups.remove(cgroups.all_dirs(state.layout, topo))
    if keep_logs:  # Ray's own logs too
        shutil.copytree(
            state.temp_dir, Path(state.folder) / "logs" / "ray", dirs_exist_ok=True, symlinks=True
        )
    shutil.rmtree(state.temp_dir, ignore_errors=True)
    left = leftovers(state)
    if not left:
        folder = Path(state.folder)
        for entry in folder.iterdir() if folder.is_dir() else ():
            if not (keep_logs and entry.name == "logs"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if not keep_logs:
            folder.rmdir()
    return left


def leftovers(state: TestbedState) -> list[str]:
    """What of the testbed still exists on the host: processes, namespaces, links, cgroups, files."""
    topo = state.topology
    left = [f"process {pid} ({host.comm(pid)})" for pid in sorted(node_pids(state))]
    present = host.namespaces()
    left += [f"namespace {d.netns}" for d in topo.devices if d.netns in present]
    left += [f"link {n}" for n in (topo.bridge, *(d.host_veth for d in topo.devices)) if host.link_exists(n)]
    left += [f"cgroup {d}" for d in cgroups.all_dirs(state.layout, topo) if d.exists()]
    if Path(state.temp_dir).exists():
        left.append(f"folder {state.temp_dir}")
    return left


def load_state(cluster_path: str | Path) -> TestbedState:
    require_host()
    return load(folder_of(cluster_path), str(cluster_path))

"""The Ray nodes of a testbed: the head on the bridge address, one worker node per device.

Each node is one `ray start --block` process, started in its own session (process group) after
joining its cgroups, and for a device inside the device's namespace (`ip netns exec`); every
process Ray starts for that node (raylet, agents, the stage actors) inherits both, so the
cgroup's process list is exactly the node's processes. Token authentication is on
(`RAY_AUTH_MODE=token`, the token in a 0600 file), Ray's workers run at niceness 0
(`RAY_worker_niceness`: Ray's default 15 only reorders processes inside a device's cgroup, where
there is nothing to reorder them against, but keeps the head's workers behind the rest of the host).

The command lines are pure functions; `start` spawns one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from e2llm.runtime.cluster import device_resource
from e2llm.testbed.topology import OBJECT_STORE_BYTES, DeviceNode, Topology

HEAD_OBJECT_STORE_BYTES = 256 * 10**6


@dataclass(frozen=True, slots=True)
class HeadPorts:
    gcs: int
    dashboard_agent: int


def ray_executable() -> str:
    """The `ray` script of this Python environment (the nodes must run the same Ray)."""
    return str(Path(sys.executable).parent / "ray")


def node_env(token_path: str) -> dict[str, str]:
    """Environment additions for every node and for a driver that joins the testbed."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": token_path,
        "RAY_worker_niceness": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def head_command(ray: str, topology: Topology, ports: HeadPorts, temp_dir: str) -> list[str]:
    """The head: no CPUs and no device resource (nothing of a plan runs there), on the bridge
    address; explicit free ports where Ray's defaults are fixed numbers another Ray on this host
    may hold."""
    return [
        ray, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", topology.head_address,
        "--port", str(ports.gcs),
        "--dashboard-agent-listen-port", str(ports.dashboard_agent),
        "--include-dashboard", "false",
        "--num-cpus", "0",
        "--object-store-memory", str(HEAD_OBJECT_STORE_BYTES),
        "--temp-dir", temp_dir,
    ]  # fmt: skip


def worker_command(ray: str, topology: Topology, node: DeviceNode, gcs_port: int, temp_dir: str) -> list[str]:
    """A device's node, inside its namespace, advertising `device:<name>` (what stage actors ask
    for). Each node has its own Ray temp dir, as on separate machines: nodes sharing one pick their
    socket names by checking which exist, and nodes started at once then pick the same."""
    return [
        "ip", "netns", "exec", node.netns,
        ray, "start", "--block", "--disable-usage-stats",
        "--address", f"{topology.head_address}:{gcs_port}",
        "--node-ip-address", node.address,
        "--resources", json.dumps({device_resource(node.name): 1}),
        "--num-cpus", "0",  # stage actors ask for none; and no idle worker is prestarted
        "--object-store-memory", str(OBJECT_STORE_BYTES),
        "--temp-dir", f"{temp_dir}/{node.index}",
    ]  # fmt: skip


def joined(procs_files: list[str], argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(command, environment): `argv` run by a shell that first moves itself into the given
    cgroups, so everything the command starts is born inside them (no child escapes)."""
    script = 'for f in $E2TB_PROCS; do echo $$ > "$f" || exit 111; done; exec "$@"'
    return ["sh", "-c", script, "sh", *argv], {"E2TB_PROCS": " ".join(procs_files)}


def start(
    argv: list[str], env: dict[str, str], log_path: Path, procs_files: list[str]
) -> subprocess.Popen[bytes]:
    """Spawn `argv` in its own session inside the cgroups, output to `log_path`."""
    cmd, extra = joined(procs_files, argv)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, **extra},
            start_new_session=True,
        )


def free_port() -> int:
    """A TCP port free on all interfaces (Ray's GCS binds 0.0.0.0) — checked, then released."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def gcs_listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False

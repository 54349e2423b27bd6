"""What the testbed asks of the host, and the few ways it touches it: `ip`/`tc`, /proc.

`unsupported_reason` says in one line why this host cannot run a testbed (not Linux, not root,
no `ip`/`tc`, no network namespaces, no cgroup cpu + memory controllers), or None.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from e2llm.testbed.cgroups import read_layout


class TestbedError(RuntimeError):
    """The host refused a step of building or removing a testbed (a command failed)."""

    __test__ = False


def unsupported_reason() -> str | None:
    if platform.system() != "Linux":
        return f"needs Linux (network namespaces, tc, cgroups); this is {platform.system()}"
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces, links, tc qdiscs and cgroups)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()[:200]}"
    if read_layout() is None:
        return "no cgroup hierarchy with the cpu and memory controllers is mounted"
    return None


def run_commands(commands: list[list[str]]) -> None:
    """Run each command; the first failure raises `TestbedError` naming it and its stderr."""
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise TestbedError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[:300]}")


def run_quietly(cmd: list[str]) -> bool:
    """Run `cmd`, ignoring its output; whether it succeeded (teardown of what may be gone)."""
    return subprocess.run(cmd, capture_output=True).returncode == 0


def host_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks of this (root) namespace's addresses and routes: the testbed's subnet must
    overlap none of them."""
    nets: list[ipaddress.IPv4Network] = []
    for cmd in (["ip", "-j", "-4", "addr"], ["ip", "-j", "-4", "route"]):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        with contextlib.suppress(json.JSONDecodeError):
            for entry in json.loads(out or "[]"):
                for info in entry.get("addr_info", []):
                    nets.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
                dst = entry.get("dst")
                if dst and dst != "default":
                    nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run_quietly([*prefix, "link", "show", "dev", name])


def link_is_up(name: str) -> bool:
    out = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True, text=True).stdout
    with contextlib.suppress(json.JSONDecodeError, IndexError, KeyError):
        return "UP" in json.loads(out)[0]["flags"]
    return False


def mem_available_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie: with
    the pid it identifies a process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)"
    if fields[0] == "Z":
        return None
    return int(fields[19])


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""

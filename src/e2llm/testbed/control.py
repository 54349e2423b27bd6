"""Acting on a running testbed: run a command inside a device, and the faults tests inject.

- `device_command`: a command as the device runs it — in its network namespace and its cgroups
  (CPU quota, memory limit), e.g. `e2llm profile`, so a profile measures the emulated device.
- `set_link_rate`: change a pair's bandwidth (both directions), live.
- `set_link_state`: take a device off the bridge and back (`ip link set ... down|up`).
- `kill_raylet`: SIGKILL the raylet of a device's node: the node dies as if the device lost
  power; the Ray head notices, and so do the stage actors' callers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

from e2llm.errors import InputError
from e2llm.testbed import cgroups, host, netcmds
from e2llm.testbed.host import TestbedError
from e2llm.testbed.raynodes import joined
from e2llm.testbed.state import TestbedState
from e2llm.testbed.topology import NS_IFNAME, DeviceNode


def node(state: TestbedState, device: str) -> DeviceNode:
    try:
        return state.topology.device(device)
    except KeyError:
        names = ", ".join(d.name for d in state.topology.devices)
        raise InputError(device, f"not a device of this testbed (devices: {names})") from None


def device_command(
    state: TestbedState, device: str | None, argv: list[str]
) -> tuple[list[str], dict[str, str]]:
    """(command, extra environment) that runs `argv` inside `device` (the head's cgroup, outside
    every namespace, for None). The environment carries the testbed's Ray token."""
    target = node(state, device) if device is not None else None
    inner = ["ip", "netns", "exec", target.netns, *argv] if target is not None else argv
    cmd, extra = joined(cgroups.procs_files(state.layout, state.topology, target), inner)
    return cmd, {**state.env, **extra}


def set_link_rate(state: TestbedState, a: str, b: str, mbps: float) -> None:
    """Both directions of the a-b link at `mbps` (b = "" for a device's link to the head)."""
    na = node(state, a)
    cmds = netcmds.set_rate_commands(na, b, mbps)
    if b:
        cmds += netcmds.set_rate_commands(node(state, b), a, mbps)
    host.run_commands(cmds)


def set_link_state(state: TestbedState, device: str, up: bool) -> None:
    host.run_commands([netcmds.link_state_command(node(state, device), up)])


def class_bytes(state: TestbedState, device: str, peer: str) -> int:
    """Bytes `device` has sent through its shaped class towards `peer` ("" for the head)."""
    target = node(state, device)
    minor = next(c.minor for c in target.egress if c.peer == peer)
    cmd = netcmds.in_ns(target, ["tc", "-s", "class", "show", "dev", NS_IFNAME])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return sent_bytes(out, netcmds.classid(minor))


def link_rates(state: TestbedState, device: str) -> dict[str, float]:
    """The rates `device` sends at now, as tc enforces them: peer ("head" for the head) -> Mbit/s."""
    target = node(state, device)
    cmd = netcmds.in_ns(target, ["tc", "class", "show", "dev", NS_IFNAME])
    rates = class_rates(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    by_id = {netcmds.classid(c.minor): c.peer or "head" for c in target.egress}
    return {by_id[cid]: mbps for cid, mbps in rates.items() if cid in by_id}


_UNITS = {"bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3}


def class_rates(tc_classes: str) -> dict[str, float]:
    """htb class id -> rate in Mbit/s, from `tc class show` output."""
    out = {}
    for match in re.finditer(r"class htb (\S+) .*?\brate (\d+(?:\.\d+)?)([KMG]?bit)", tc_classes):
        out[match.group(1)] = float(match.group(2)) * _UNITS[match.group(3).lower()]
    return out


def sent_bytes(tc_class_stats: str, classid: str) -> int:
    """The 'Sent N bytes' of class `classid` in `tc -s class show` output."""
    match = re.search(rf"class htb {re.escape(classid)} .*?\n\s*Sent (\d+) bytes", tc_class_stats, re.S)
    if match is None:
        raise ValueError(f"no htb class {classid} in the tc statistics")
    return int(match.group(1))


def raylet_pid(state: TestbedState, device: str) -> int | None:
    target = node(state, device)
    dirs = cgroups.all_dirs(state.layout, state.topology)
    mine = [d for d in dirs if d.name == target.cgroup]
    for pid in sorted(cgroups.pids(mine)):
        if host.comm(pid) == "raylet":
            return pid
    return None


def kill_raylet(state: TestbedState, device: str) -> int:
    """SIGKILL the device's raylet; returns its pid."""
    pid = raylet_pid(state, device)
    if pid is None:
        raise TestbedError(f"the Ray node of {device} has no raylet running")
    os.kill(pid, signal.SIGKILL)
    return pid

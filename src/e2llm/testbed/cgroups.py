"""Cgroups for the testbed: v1 or v2, whichever the host has (detected, not assumed).

The testbed's cgroup `e2tb-<id>` holds one child for the head and one per device. Its CPU weight
is raised (`TESTBED_CPU_SHARES`): the devices' quotas cap what the testbed takes, the weight makes
a busy host give it that much, as dedicated devices would have it. Under v1 the testbed's cgroup
is created in each controller's hierarchy *below the cgroup this process is in* (so whatever
limits the host put on us still hold); under v2 below the root, the one cgroup that may hold
processes and delegate controllers at once.

`detect_layout` and `cgroup_writes` are pure (tested on sample /proc text); the rest writes files.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from e2llm.testbed.topology import DeviceNode, Topology

TESTBED_CPU_SHARES = 16 * 1024  # v1 cpu.shares: 16 nice-0 processes' worth
TESTBED_CPU_WEIGHT = 1600  # v2 cpu.weight (100 = one nice-0 process)


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where the testbed's cgroups go: under v1 one parent per controller, under v2 one."""

    version: int  # 1 or 2
    cpu_parent: str
    memory_parent: str

    def dirs(self, name: str) -> list[Path]:
        """The directories of cgroup `name` (a path relative to the parents), one per hierarchy."""
        parents = [self.cpu_parent] if self.version == 2 else [self.cpu_parent, self.memory_parent]
        return [Path(p) / name for p in parents]


def detect_layout(mountinfo: str, proc_cgroup: str, v2_controllers: str = "") -> CgroupLayout | None:
    """The layout from /proc/self/mountinfo, /proc/self/cgroup and (for v2) the root's
    cgroup.controllers; None without the cpu and memory controllers."""
    v1, v2 = _mounts(mountinfo)
    mine: dict[str, str] = {}  # controller ("" for v2) -> this process's cgroup path
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                mine[ctrl] = parts[2]
    if "cpu" in v1 and "memory" in v1:
        return CgroupLayout(
            1, _below(v1["cpu"], mine.get("cpu", "/")), _below(v1["memory"], mine.get("memory", "/"))
        )
    if v2 is not None and {"cpu", "memory"} <= set(v2_controllers.split()):
        return CgroupLayout(2, v2[0], v2[0])
    return None


def _mounts(mountinfo: str) -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """v1 controller -> (mount point, mount root), and the v2 (mount point, root) if mounted."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype = fields[3], fields[4], tail[0]
        if fstype == "cgroup":
            for opt in tail[2].split(","):
                v1.setdefault(opt, (mount_point, root))
        elif fstype == "cgroup2" and v2 is None:
            v2 = (mount_point, root)
    return v1, v2


def _below(mount: tuple[str, str], cgroup_path: str) -> str:
    """This process's cgroup directory inside a hierarchy mounted at mount[0] from mount[1]."""
    point, root = mount
    rel = cgroup_path[len(root) :] if root != "/" and cgroup_path.startswith(root) else cgroup_path
    return str(Path(point) / rel.lstrip("/"))


def read_layout() -> CgroupLayout | None:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    controllers = ""
    v2 = _mounts(mountinfo)[1]
    if v2 is not None:
        with contextlib.suppress(OSError):
            controllers = Path(v2[0], "cgroup.controllers").read_text()
    return detect_layout(mountinfo, proc_cgroup, controllers)


def cgroup_writes(layout: CgroupLayout, topology: Topology) -> list[tuple[Path, str]]:
    """(directory, "file=value") made with the cgroups, in order: the testbed's weight, then each
    device's memory limit. The CPU quotas come later (`quota_writes`)."""
    tb = topology.cgroup
    if layout.version == 1:
        writes = [(Path(layout.cpu_parent) / tb, f"cpu.shares={TESTBED_CPU_SHARES}")]
        for node in topology.devices:
            memory = Path(layout.memory_parent) / tb / node.cgroup
            writes.append((memory, f"memory.limit_in_bytes={node.memory_limit_bytes}"))
        return writes
    root = Path(layout.cpu_parent) / tb
    writes = [(root, "cgroup.subtree_control=+cpu +memory"), (root, f"cpu.weight={TESTBED_CPU_WEIGHT}")]
    for node in topology.devices:
        writes += [
            (root / node.cgroup, f"memory.max={node.memory_limit_bytes}"),
            (root / node.cgroup, "memory.swap.max=0"),
        ]
    return writes


def quota_writes(layout: CgroupLayout, topology: Topology) -> list[tuple[Path, str]]:
    """The devices' CPU quotas. Written once their Ray nodes have joined: booting Ray is not part
    of what a device's speed is emulated for, and under a fraction of a core on a busy 2-core
    host a raylet can miss the 30 s Ray gives it to register."""
    writes = []
    for node in topology.devices:
        d = Path(layout.cpu_parent) / topology.cgroup / node.cgroup
        if layout.version == 1:
            writes += [
                (d, f"cpu.cfs_period_us={topology.period_us}"),
                (d, f"cpu.cfs_quota_us={node.cpu_quota_us}"),
            ]
        else:
            writes.append((d, f"cpu.max={node.cpu_quota_us} {topology.period_us}"))
    return writes


def all_dirs(layout: CgroupLayout, topology: Topology) -> list[Path]:
    """Every cgroup directory of the testbed, parents first."""
    names = [topology.cgroup, f"{topology.cgroup}/{topology.head_cgroup}"]
    names += [f"{topology.cgroup}/{node.cgroup}" for node in topology.devices]
    return [d for name in names for d in layout.dirs(name)]


def procs_files(layout: CgroupLayout, topology: Topology, node: DeviceNode | None) -> list[str]:
    """The cgroup.procs files a process writes its pid to, to join `node`'s cgroups (the head's
    for None)."""
    child = node.cgroup if node is not None else topology.head_cgroup
    return [str(d / "cgroup.procs") for d in layout.dirs(f"{topology.cgroup}/{child}")]


def create(layout: CgroupLayout, topology: Topology) -> None:
    for d in all_dirs(layout, topology):
        d.mkdir(exist_ok=True)
    write(cgroup_writes(layout, topology))


def write(writes: list[tuple[Path, str]]) -> None:
    for directory, assignment in writes:
        name, _, value = assignment.partition("=")
        try:
            (directory / name).write_text(value)
        except OSError as e:
            raise OSError(f"cannot write {value!r} to {directory / name}: {e.strerror}") from None


def pids(directories: list[Path]) -> set[int]:
    """Processes in any of `directories` (missing ones count as empty)."""
    found: set[int] = set()
    for d in directories:
        with contextlib.suppress(OSError):
            found |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
    return found


def remove(directories: list[Path], timeout_s: float = 5.0) -> list[Path]:
    """rmdir children before parents; returns those left (a cgroup with processes stays). The
    kernel frees a cgroup a moment after its last process is reaped, hence the retries."""
    left = [d for d in directories if d.exists()]
    deadline = time.monotonic() + timeout_s
    while left:
        for d in sorted(left, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(d)
        left = [d for d in left if d.exists()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return left


def memory_in_use(layout: CgroupLayout, name: str) -> int | None:
    """Bytes charged to cgroup `name` (relative to the parents) now; None if unreadable."""
    d = Path(layout.memory_parent) / name
    file = "memory.usage_in_bytes" if layout.version == 1 else "memory.current"
    try:
        return int((d / file).read_text())
    except (OSError, ValueError):
        return None

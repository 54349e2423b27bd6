"""Cgroup layout detection (v1 / v2 from /proc text) and what is written where."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from e2llm.specs.cluster_file import cluster_from_dict
from e2llm.testbed.cgroups import (
    TESTBED_CPU_SHARES,
    TESTBED_CPU_WEIGHT,
    CgroupLayout,
    all_dirs,
    cgroup_writes,
    detect_layout,
    procs_files,
    quota_writes,
)
from e2llm.testbed.topology import TestbedOptions, plan_topology

V1_MOUNTINFO = """\
25 20 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUP = "4:memory:/jobs/42\n2:cpuacct:/\n1:cpu:/\n0::/\n"
V2_MOUNTINFO = "30 20 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/user.slice/session-1.scope\n"

TOPO = plan_topology(
    cluster_from_dict(
        {
            "devices": [{"name": "d0", "memory_gb": 1, "tflops": 1, "mem_bandwidth_gbs": 1}],
            "network": {"bandwidth_mbps": 100, "latency_ms": 0.1},
        },
        "c.yaml",
    ),
    TestbedOptions(),
    "ab12",
    ipaddress.IPv4Network("198.18.0.0/24"),
    2,
)


def test_v1_parents_are_this_processs_own_cgroups_per_controller():
    layout = detect_layout(V1_MOUNTINFO, V1_CGROUP)
    assert layout == CgroupLayout(1, "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory/jobs/42")


def test_v1_mount_of_a_subtree_strips_its_root():
    mountinfo = "26 25 0:23 /jobs /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    mountinfo += "28 25 0:25 /jobs /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    layout = detect_layout(mountinfo, "4:memory:/jobs/42\n1:cpu:/jobs/7\n")
    assert layout == CgroupLayout(1, "/sys/fs/cgroup/cpu/7", "/sys/fs/cgroup/memory/42")


def test_v2_needs_the_cpu_and_memory_controllers_and_uses_the_root():
    assert detect_layout(V2_MOUNTINFO, V2_CGROUP, "cpuset cpu io memory pids") == CgroupLayout(
        2, "/sys/fs/cgroup", "/sys/fs/cgroup"
    )
    assert detect_layout(V2_MOUNTINFO, V2_CGROUP, "cpuset io pids") is None
    assert detect_layout("", "") is None


def test_v1_writes_weight_memory_then_quota():
    layout = CgroupLayout(1, "/cg/cpu", "/cg/memory/me")
    d0 = TOPO.devices[0]
    assert cgroup_writes(layout, TOPO) == [
        (Path("/cg/cpu/e2tb-ab12"), f"cpu.shares={TESTBED_CPU_SHARES}"),
        (Path("/cg/memory/me/e2tb-ab12/dev-d0"), f"memory.limit_in_bytes={d0.memory_limit_bytes}"),
    ]
    assert quota_writes(layout, TOPO) == [
        (Path("/cg/cpu/e2tb-ab12/dev-d0"), f"cpu.cfs_period_us={TOPO.period_us}"),
        (Path("/cg/cpu/e2tb-ab12/dev-d0"), f"cpu.cfs_quota_us={d0.cpu_quota_us}"),
    ]
    assert procs_files(layout, TOPO, d0) == [
        "/cg/cpu/e2tb-ab12/dev-d0/cgroup.procs",
        "/cg/memory/me/e2tb-ab12/dev-d0/cgroup.procs",
    ]
    assert procs_files(layout, TOPO, None)[0] == "/cg/cpu/e2tb-ab12/head/cgroup.procs"
    dirs = all_dirs(layout, TOPO)
    assert dirs[:2] == [Path("/cg/cpu/e2tb-ab12"), Path("/cg/memory/me/e2tb-ab12")]  # parents first
    assert len(dirs) == 6


def test_v2_enables_the_controllers_for_the_children():
    layout = CgroupLayout(2, "/cg", "/cg")
    d0 = TOPO.devices[0]
    writes = cgroup_writes(layout, TOPO)
    assert writes[0] == (Path("/cg/e2tb-ab12"), "cgroup.subtree_control=+cpu +memory")
    assert (Path("/cg/e2tb-ab12"), f"cpu.weight={TESTBED_CPU_WEIGHT}") in writes
    assert (Path("/cg/e2tb-ab12/dev-d0"), f"memory.max={d0.memory_limit_bytes}") in writes
    assert quota_writes(layout, TOPO) == [
        (Path("/cg/e2tb-ab12/dev-d0"), f"cpu.max={d0.cpu_quota_us} {TOPO.period_us}")
    ]
    assert procs_files(layout, TOPO, d0) == ["/cg/e2tb-ab12/dev-d0/cgroup.procs"]

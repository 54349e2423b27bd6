"""The testbed's plan of a cluster: names, addresses, link rates, CPU quotas, memory limits."""

from __future__ import annotations

import ipaddress

import pytest

from e2llm.errors import InputError
from e2llm.specs.cluster_file import cluster_from_dict
from e2llm.testbed.topology import (
    CPU_PERIOD_US,
    HEAD_CLASS,
    NODE_OVERHEAD_BYTES,
    TestbedOptions,
    cpu_cores,
    emulated_cluster,
    pick_subnet,
    plan_topology,
    relative_speed,
    safe_name,
)
from e2llm.testbed.topology import testbed_id as id_of

SUBNET = ipaddress.IPv4Network("198.18.7.0/24")


def cluster(devices=None, links=(), bandwidth=100.0):
    devices = devices or [
        {"name": "fast", "memory_gb": 2.0, "tflops": 0.4, "mem_bandwidth_gbs": 40},
        {"name": "mid", "memory_gb": 1.0, "tflops": 0.1, "mem_bandwidth_gbs": 40},
        {"name": "slow", "memory_gb": 1.0, "tflops": 0.1, "mem_bandwidth_gbs": 10},
    ]
    net = {"bandwidth_mbps": bandwidth, "latency_ms": 0.5, "links": list(links)}
    return cluster_from_dict({"devices": devices, "network": net}, "c.yaml")


def plan(c=None, host_cores=2, **opts):
    return plan_topology(c or cluster(), TestbedOptions(**opts), "ab12", SUBNET, host_cores)


def test_relative_speed_is_the_geometric_mean_of_compute_and_bandwidth_ratios():
    c = cluster()
    best_tf, best_bw = 0.4, 40
    assert relative_speed(c.device("fast"), best_tf, best_bw) == 1.0
    assert relative_speed(c.device("mid"), best_tf, best_bw) == pytest.approx(0.5)  # sqrt(1/4 * 1)
    assert relative_speed(c.device("slow"), best_tf, best_bw) == pytest.approx(0.25)


def test_the_devices_share_the_budget_in_proportion_to_speed_the_fastest_at_most_one_core():
    cores = cpu_cores(cluster(), budget_cores=1.5)
    assert cores["fast"] == pytest.approx(1.5 / 1.75)
    assert cores["mid"] == pytest.approx(cores["fast"] / 2)
    assert cores["slow"] == pytest.approx(cores["fast"] / 4)
    assert sum(cores.values()) == pytest.approx(1.5)
    roomy = cpu_cores(cluster(), budget_cores=8.0)
    assert roomy == pytest.approx({"fast": 1.0, "mid": 0.5, "slow": 0.25})


def test_default_budget_leaves_half_a_core_for_the_head_and_quotas_are_per_period():
    topo = plan(host_cores=2)
    total = sum(d.cpu_cores for d in topo.devices)
    assert total == pytest.approx(1.5)
    for d in topo.devices:
        assert d.cpu_quota_us == round(d.cpu_cores * CPU_PERIOD_US)
    assert plan(host_cores=2, cpu_budget_cores=1.0).devices[0].cpu_cores == pytest.approx(1 / 1.75)


def test_a_device_below_the_kernels_minimum_quota_is_refused():
    devices = [
        {"name": "big", "memory_gb": 1, "tflops": 100, "mem_bandwidth_gbs": 1000},
        {"name": "tiny", "memory_gb": 1, "tflops": 0.001, "mem_bandwidth_gbs": 0.01},
    ]
    with pytest.raises(InputError, match=r"tiny would get .* below the kernel's minimum quota"):
        plan(cluster(devices))


def test_names_carry_the_id_and_fit_the_kernels_interface_names():
    topo = plan()
    assert topo.bridge == "e2tbab12br"
    assert [d.netns for d in topo.devices] == ["e2tb-ab12-fast", "e2tb-ab12-mid", "e2tb-ab12-slow"]
    assert [d.host_veth for d in topo.devices] == ["e2tbab12v0", "e2tbab12v1", "e2tbab12v2"]
    assert all(len(n) <= 15 for n in [topo.bridge, *(d.host_veth for d in topo.devices)])
    assert topo.cgroup == "e2tb-ab12"
    assert [d.cgroup for d in topo.devices] == ["dev-fast", "dev-mid", "dev-slow"]
    assert topo.head_cgroup == "head"  # cannot clash with a device's "dev-..." cgroup


def test_addresses_head_first_then_devices_in_order():
    topo = plan()
    assert topo.subnet == "198.18.7.0/24"
    assert topo.head_address == "198.18.7.1"
    assert [d.address for d in topo.devices] == ["198.18.7.2", "198.18.7.3", "198.18.7.4"]


def test_each_device_shapes_its_traffic_to_every_peer_at_the_pairs_scaled_bandwidth():
    c = cluster(links=[{"a": "fast", "b": "slow", "bandwidth_mbps": 20}], bandwidth=100)
    topo = plan(c, scale=0.5)
    fast = topo.device("fast")
    rates = {cls.peer: cls.rate_mbps for cls in fast.egress}
    assert rates == {"": 50.0, "mid": 50.0, "slow": 10.0}
    assert fast.egress[0].minor == HEAD_CLASS and fast.egress[0].dst_address == topo.head_address
    assert {c.dst_address for c in fast.egress[1:]} == {"198.18.7.3", "198.18.7.4"}
    slow = {cls.peer: cls.rate_mbps for cls in topo.device("slow").egress}
    assert slow["fast"] == 10.0  # symmetric: the other direction at the same rate
    assert fast.head_rate_mbps == 50.0
    minors = [cls.minor for cls in fast.egress]
    assert len(set(minors)) == len(minors)


def test_memory_limit_is_scaled_memory_plus_the_ray_nodes_own():
    topo = plan(memory_scale=0.5)
    assert topo.device("fast").memory_limit_bytes == 2**30 + NODE_OVERHEAD_BYTES
    assert topo.device("mid").memory_limit_bytes == 2**29 + NODE_OVERHEAD_BYTES


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"scale": 0}, "scale: must be a positive number"),
        ({"scale": float("nan")}, "scale"),
        ({"memory_scale": -1}, "memory_scale"),
        ({"cpu_budget_cores": 3}, r"cpu_budget_cores: must be in \(0, 2\]"),
        ({"cpu_budget_cores": 0}, "cpu_budget_cores"),
        ({"scale": 1e-6}, "below what tc can shape"),
    ],
)
def test_bad_options_are_one_line_errors(opts, match):
    with pytest.raises(InputError, match=match):
        plan(**opts)


def test_device_names_that_collide_once_made_safe_are_refused():
    devices = [
        {"name": "a/b", "memory_gb": 1, "tflops": 1, "mem_bandwidth_gbs": 1},
        {"name": "a_b", "memory_gb": 1, "tflops": 1, "mem_bandwidth_gbs": 1},
    ]
    with pytest.raises(InputError, match="same namespace name"):
        plan(cluster(devices))
    assert safe_name("dev 1/x") == "dev_1_x"


def test_pick_subnet_skips_every_network_in_use():
    assert pick_subnet([]) == ipaddress.IPv4Network("198.18.0.0/24")
    used = [ipaddress.IPv4Network("198.18.0.0/24"), ipaddress.IPv4Network("198.18.1.7/32")]
    assert pick_subnet(used) == ipaddress.IPv4Network("198.18.2.0/24")
    with pytest.raises(InputError, match="in use"):
        pick_subnet([ipaddress.IPv4Network("198.18.0.0/15")])


def test_testbed_id_depends_on_the_path_only():
    assert id_of("/a/c.yaml") == id_of("/a/c.yaml")
    assert id_of("/a/c.yaml") != id_of("/b/c.yaml")
    assert len(id_of("/a/c.yaml")) == 4


def test_the_emulated_cluster_is_what_the_testbed_runs():
    c = cluster(links=[{"a": "fast", "b": "slow", "bandwidth_mbps": 20}], bandwidth=100)
    emu = emulated_cluster(c, TestbedOptions(scale=0.1, memory_scale=0.5), 0.04, {"fast": "/p/fast.json"})
    assert emu.device("fast").memory_gb == 1.0 and emu.device("fast").profile == "/p/fast.json"
    assert emu.device("mid").profile is None
    assert emu.default_link.bandwidth_mbps == 10.0 and emu.default_link.latency_ms == 0.04
    assert emu.link("fast", "slow").bandwidth_mbps == 2.0 and emu.link("fast", "slow").latency_ms == 0.04
    assert emu.names == c.names

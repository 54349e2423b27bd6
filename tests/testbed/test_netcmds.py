"""The ip/tc commands of a testbed: what is built, shaped, changed and removed."""

from __future__ import annotations

import ipaddress

import pytest

from e2llm.specs.cluster_file import cluster_from_dict
from e2llm.testbed.control import class_rates, sent_bytes
from e2llm.testbed.netcmds import (
    classid,
    link_state_command,
    rate_arg,
    set_rate_commands,
    setup_commands,
    shaping_commands,
    teardown_commands,
)
from e2llm.testbed.topology import TestbedOptions, plan_topology

CLUSTER = cluster_from_dict(
    {
        "devices": [{"name": n, "memory_gb": 1, "tflops": 1, "mem_bandwidth_gbs": 1} for n in ("a", "b")],
        "network": {
            "bandwidth_mbps": 200,
            "latency_ms": 0.1,
            "links": [{"a": "a", "b": "b", "bandwidth_mbps": 25}],
        },
    },
    "c.yaml",
)
TOPO = plan_topology(CLUSTER, TestbedOptions(), "ab12", ipaddress.IPv4Network("198.18.3.0/24"), 2)


def joined(cmds):
    return [" ".join(c) for c in cmds]


def test_rates_in_kbit_and_class_ids_in_hex():
    assert rate_arg(25) == "25000kbit"
    assert rate_arg(0.0001) == "1kbit"
    assert classid(16) == "1:10"


def test_setup_builds_bridge_then_each_device_with_address_and_no_default_route():
    cmds = joined(setup_commands(TOPO))
    assert cmds[:3] == [
        "ip link add e2tbab12br type bridge",
        "ip addr add 198.18.3.1/24 dev e2tbab12br",
        "ip link set e2tbab12br up",
    ]
    assert "ip netns add e2tb-ab12-a" in cmds
    assert "ip link add e2tbab12v0 type veth peer name eth0 netns e2tb-ab12-a" in cmds
    assert "ip link set e2tbab12v0 master e2tbab12br up" in cmds
    assert "ip -n e2tb-ab12-b addr add 198.18.3.3/24 dev eth0" in cmds
    assert not any("route" in c for c in cmds)  # traffic cannot leave the bridge


def test_a_device_shapes_by_destination_inside_and_the_heads_traffic_on_the_host_end():
    a = TOPO.device("a")
    cmds = joined(shaping_commands(TOPO, a))
    ns = "ip netns exec e2tb-ab12-a "
    assert cmds[0] == ns + "tc qdisc add dev eth0 root handle 1: htb default 1"
    assert (
        ns + "tc class add dev eth0 parent 1: classid 1:1 htb rate 200000kbit ceil 200000kbit quantum 60000"
        in cmds
    )
    to_b = next(c for c in a.egress if c.peer == "b")
    b = classid(to_b.minor)
    assert (
        f"{ns}tc class add dev eth0 parent 1: classid {b} htb rate 25000kbit ceil 25000kbit quantum 60000"
        in cmds
    )
    assert (
        f"{ns}tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 198.18.3.3/32 flowid {b}"
        in cmds
    )
    assert "tc qdisc add dev e2tbab12v0 root handle 1: htb default 0" in cmds  # others pass unshaped
    assert (
        "tc filter add dev e2tbab12v0 parent 1: protocol ip prio 1 u32 match ip src 198.18.3.1/32 flowid 1:1"
        in cmds
    )


def test_changing_a_rate_changes_the_class_in_place():
    a = TOPO.device("a")
    to_b = next(c for c in a.egress if c.peer == "b")
    assert joined(set_rate_commands(a, "b", 12.5)) == [
        f"ip netns exec e2tb-ab12-a tc class change dev eth0 parent 1: classid {classid(to_b.minor)} htb "
        "rate 12500kbit ceil 12500kbit quantum 60000"
    ]
    head = joined(set_rate_commands(a, "", 50))
    assert len(head) == 2 and "dev e2tbab12v0" in head[1]  # both directions of the head link


def test_link_state_and_teardown():
    assert link_state_command(TOPO.device("b"), up=False) == ["ip", "link", "set", "e2tbab12v1", "down"]
    assert joined(teardown_commands(["e2tb-ab12-a"], ["e2tbab12br"])) == [
        "ip netns delete e2tb-ab12-a",
        "ip link delete e2tbab12br",
    ]


def test_sent_bytes_reads_one_class_from_tc_statistics():
    stats = (
        "class htb 1:1 root prio 0 rate 100Mbit ceil 100Mbit burst 1600b cburst 1600b \n"
        " Sent 1234 bytes 10 pkt (dropped 0, overlimits 0 requeues 0) \n"
        " backlog 0b 0p requeues 0\n"
        "class htb 1:11 root prio 0 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b \n"
        " Sent 99 bytes 1 pkt (dropped 0, overlimits 0 requeues 0) \n"
    )
    assert sent_bytes(stats, "1:1") == 1234
    assert sent_bytes(stats, "1:11") == 99
    with pytest.raises(ValueError, match="no htb class 1:12"):
        sent_bytes(stats, "1:12")


def test_class_rates_read_the_units_tc_prints():
    out = (
        "class htb 1:1 root prio 0 rate 100Mbit ceil 100Mbit burst 1600b cburst 1600b \n"
        "class htb 1:10 root prio 0 rate 12500Kbit ceil 12500Kbit burst 1600b cburst 1600b \n"
        "class htb 1:11 root prio 0 rate 2Gbit ceil 2Gbit burst 1600b cburst 1600b \n"
        "class htb 1:12 root prio 0 rate 800bit ceil 800bit burst 1600b cburst 1600b \n"
    )
    assert class_rates(out) == pytest.approx({"1:1": 100.0, "1:10": 12.5, "1:11": 2000.0, "1:12": 0.0008})

"""The `ip` and `tc` command lines that build and remove a testbed's network (pure).

Each command is an argv list; `host.run_commands` runs them in order and stops at the first
failure. Building: the bridge with the head's address, then per device a namespace, a veth pair
(host end on the bridge, `eth0` in the namespace), the device's address, and the htb shaping of
`topology.py`. Removing a namespace removes the veth pair with it, so tearing down is: delete the
namespaces, then the bridge.
"""

from __future__ import annotations

from e2llm.testbed.topology import NS_IFNAME, SUBNET_PREFIX, DeviceNode, Topology

Command = list[str]
# htb's quantum (bytes a class may send per round when classes share spare bandwidth): the
# default rate/r2q overflows tc's sane range at Gbit rates and warns; one MTU-sized burst per
# round is all a class of ours needs (classes never borrow, rate == ceil).
HTB_QUANTUM = 60_000


def rate_arg(mbps: float) -> str:
    """tc's rate syntax, in kbit/s (tc rounds finer units anyway)."""
    return f"{max(1, round(mbps * 1000))}kbit"


def classid(minor: int) -> str:
    return f"1:{minor:x}"  # tc reads minors in hex


def in_ns(node: DeviceNode, cmd: Command) -> Command:
    return ["ip", "netns", "exec", node.netns, *cmd]


def class_command(dev: str, minor: int, mbps: float, verb: str = "add") -> Command:
    rate = rate_arg(mbps)
    return ["tc", "class", verb, "dev", dev, "parent", "1:", "classid", classid(minor), "htb",
            "rate", rate, "ceil", rate, "quantum", str(HTB_QUANTUM)]  # fmt: skip


def _filter(dev: str, field: str, address: str, minor: int) -> Command:
    return ["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", field, f"{address}/32", "flowid", classid(minor)]  # fmt: skip


def shaping_commands(topology: Topology, node: DeviceNode) -> list[Command]:
    """htb on both ends of `node`'s veth: in the namespace one class per peer (by destination),
    on the host end one class for the head's traffic (by source); other traffic arriving at the
    host end was shaped by its sender and passes unclassified (htb's direct queue)."""
    cmds = [in_ns(node, ["tc", "qdisc", "add", "dev", NS_IFNAME, "root", "handle", "1:", "htb", "default",
                         f"{node.egress[0].minor:x}"])]  # fmt: skip
    for cls in node.egress:
        cmds.append(in_ns(node, class_command(NS_IFNAME, cls.minor, cls.rate_mbps)))
        if cls.peer:  # the head's class is the default: no filter needed
            cmds.append(in_ns(node, _filter(NS_IFNAME, "dst", cls.dst_address, cls.minor)))
    host = node.host_veth
    cmds += [
        ["tc", "qdisc", "add", "dev", host, "root", "handle", "1:", "htb", "default", "0"],
        class_command(host, 1, node.head_rate_mbps),
        _filter(host, "src", topology.head_address, 1),
    ]
    return cmds


def setup_commands(topology: Topology) -> list[Command]:
    """Everything `ip`/`tc` must do to build the testbed's network, in order."""
    br = topology.bridge
    cmds: list[Command] = [
        ["ip", "link", "add", br, "type", "bridge"],
        ["ip", "addr", "add", f"{topology.head_address}/{SUBNET_PREFIX}", "dev", br],
        ["ip", "link", "set", br, "up"],
    ]
    for node in topology.devices:
        cmds += [
            ["ip", "netns", "add", node.netns],
            [
                "ip",
                "link",
                "add",
                node.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                NS_IFNAME,
                "netns",
                node.netns,
            ],
            ["ip", "link", "set", node.host_veth, "master", br, "up"],
            ["ip", "-n", node.netns, "addr", "add", f"{node.address}/{SUBNET_PREFIX}", "dev", NS_IFNAME],
            ["ip", "-n", node.netns, "link", "set", "lo", "up"],
            ["ip", "-n", node.netns, "link", "set", NS_IFNAME, "up"],
            *shaping_commands(topology, node),
        ]
    return cmds


def teardown_commands(namespaces: list[str], links: list[str]) -> list[Command]:
    """Delete `namespaces` (their veth ends go with them), then `links` (bridge, host ends)."""
    return [["ip", "netns", "delete", ns] for ns in namespaces] + [
        ["ip", "link", "delete", ln] for ln in links
    ]


def set_rate_commands(node: DeviceNode, peer: str, mbps: float) -> list[Command]:
    """Change the rate of `node`'s class towards `peer` (a device name, "" for the head)."""
    cls = next(c for c in node.egress if c.peer == peer)
    cmds = [in_ns(node, class_command(NS_IFNAME, cls.minor, mbps, verb="change"))]
    if not peer:
        cmds.append(class_command(node.host_veth, 1, mbps, verb="change"))
    return cmds


def link_state_command(node: DeviceNode, up: bool) -> Command:
    """Take `node`'s host-side veth down or up: the device drops off the bridge, as when its
    cable or Wi-Fi goes; its namespace, address and processes stay."""
    return ["ip", "link", "set", node.host_veth, "up" if up else "down"]

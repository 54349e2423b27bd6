"""What a testbed of a cluster looks like: names, addresses, link rates, CPU and memory quotas.

Pure functions from a `Cluster` and `TestbedOptions` to a `Topology`; nothing here touches the
host (`netcmds.py` turns a topology into `ip`/`tc` commands, `cgroups.py` into cgroup writes).

- **Names.** Every object carries the testbed's short id (`e2tb<id>...`, 4 hex digits derived from
  the cluster file's path), so two testbeds — or a testbed and anything else on the host — never
  share a name. Network namespaces are `e2tb-<id>-<device>`; interface names stay within the
  kernel's 15 characters (`e2tb<id>br` for the bridge, `e2tb<id>v<i>` for device i's host end).
- **Addresses.** One /24 of 198.18.0.0/15 (RFC 2544's benchmarking range, never routed) per
  testbed, the first one no interface of the host already uses: `.1` is the bridge and the Ray
  head, device i is `.(i + 2)`. Namespaces get no default route: their traffic cannot leave the
  bridge.
- **Links.** Each device shapes what it sends (htb on its end of the veth): one class per other
  device at that pair's bandwidth from the cluster file times `scale`, one for the head at the
  network's default bandwidth times `scale`. A link is full duplex, each direction shaped at its
  sender. The head's traffic to a device is shaped on the device's host-side veth. Latency is not
  emulated: this kernel has no netem (nor fq, which delays by timestamp), so the links have the
  bridge's own few tens of microseconds.
- **CPU.** A device's speed relative to the fastest is the geometric mean of its compute and
  memory-bandwidth ratios (`relative_speed`): a CPU quota slows compute and memory traffic alike,
  so one number has to stand for both. The devices share `cpu_budget_cores` (default: the host's
  cores minus `HEAD_RESERVE_CORES` for the head, the server and the load generator); the fastest
  gets min(1 core, budget / sum of relative speeds) — one core at most, because a device runs one
  torch thread — and every other device its relative speed times that. So the emulated devices
  never need more CPU together than the budget: none waits for another, as real devices don't.
- **Memory.** A device's memory limit is its `memory_gb` times `memory_scale`, plus
  `NODE_OVERHEAD_BYTES` for the Ray node's own processes (raylet, agents), which a real device
  runs beside the model too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from e2llm.errors import InputError
from e2llm.specs.device import Cluster, Device, Link

ADDRESS_POOL = ipaddress.IPv4Network("198.18.0.0/15")
SUBNET_PREFIX = 24
MAX_DEVICES = 2 ** (32 - SUBNET_PREFIX) - 3  # .0 network, .1 head, .255 broadcast
HEAD_RESERVE_CORES = 0.5
MAX_DEVICE_CORES = 1.0  # one torch thread per stage actor
# The CFS period of every device's quota. Measured on the 2-core CI box (torch matmuls under a
# 0.375-core quota): at 10 ms a call of 10 ms or more takes its time / quota within ~5%; shorter
# periods were *less* accurate (the kernel hands out quota in 5 ms slices), longer ones burstier.
CPU_PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # the kernel's floor for cpu.cfs_quota_us / cpu.max
NODE_OVERHEAD_BYTES = 512 * 2**20  # a Ray worker node's raylet + agents use ~0.2-0.4 GiB
OBJECT_STORE_BYTES = 200 * 10**6  # per device node (Ray's minimum is 75 MB)
MIN_RATE_MBPS = 0.01  # below this htb's arithmetic loses precision
HEAD_CLASS = 1  # htb minor of the head class (also the default: ARP and anything unmatched)
FIRST_DEVICE_CLASS = 16


@dataclass(frozen=True, slots=True)
class TestbedOptions:
    """How to emulate the cluster on this host (see the module docstring)."""

    scale: float = 1.0  # link bandwidths are multiplied by this
    memory_scale: float = 1.0  # device memory limits are multiplied by this
    cpu_budget_cores: float | None = None  # cores the devices share; None: host cores - reserve
    __test__ = False  # not a pytest test class


@dataclass(frozen=True, slots=True)
class EgressClass:
    """One htb class on a device's side of its veth: traffic to `dst_address` at `rate_mbps`."""

    minor: int
    peer: str  # device name, or "" for the head
    dst_address: str
    rate_mbps: float


@dataclass(frozen=True, slots=True)
class DeviceNode:
    name: str
    index: int
    netns: str
    host_veth: str  # the bridge-side end; the namespace end is `NS_IFNAME`
    address: str
    relative_speed: float
    cpu_cores: float  # quota, in cores
    cpu_quota_us: int  # per `CPU_PERIOD_US`
    memory_limit_bytes: int
    egress: tuple[EgressClass, ...]
    head_rate_mbps: float  # head -> this device, shaped on `host_veth`
    cgroup: str  # this device's cgroup, below the testbed's


@dataclass(frozen=True, slots=True)
class Topology:
    testbed_id: str
    subnet: str  # e.g. "198.18.3.0/24"
    bridge: str
    head_address: str
    head_cgroup: str
    cgroup: str  # the testbed's own cgroup (parent of the head's and the devices')
    devices: tuple[DeviceNode, ...]
    period_us: int = CPU_PERIOD_US

    def device(self, name: str) -> DeviceNode:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


NS_IFNAME = "eth0"


def testbed_id(cluster_path: str) -> str:
    """4 hex digits from the absolute path of the cluster file: `down FILE` finds what `up FILE`
    made, and two cluster files get two testbeds."""
    return hashlib.sha256(cluster_path.encode()).hexdigest()[:4]


def safe_name(name: str) -> str:
    """A device name as it may appear in a namespace or cgroup name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "_"


def relative_speed(device: Device, fastest_tflops: float, fastest_bandwidth_gbs: float) -> float:
    """Geometric mean of the device's compute and bandwidth ratios to the cluster's best."""
    return math.sqrt((device.tflops / fastest_tflops) * (device.mem_bandwidth_gbs / fastest_bandwidth_gbs))


def cpu_cores(cluster: Cluster, budget_cores: float) -> dict[str, float]:
    """Each device's CPU quota in cores (see the module docstring)."""
    best_tf = max(d.tflops for d in cluster.devices)
    best_bw = max(d.mem_bandwidth_gbs for d in cluster.devices)
    speeds = {d.name: relative_speed(d, best_tf, best_bw) for d in cluster.devices}
    fastest = min(MAX_DEVICE_CORES, budget_cores / sum(speeds.values()))
    return {name: s * fastest for name, s in speeds.items()}


def pick_subnet(in_use: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of the pool that overlaps no network in `in_use`."""
    used = list(in_use)
    for net in ADDRESS_POOL.subnets(new_prefix=SUBNET_PREFIX):
        if not any(net.overlaps(u) for u in used):
            return net
    raise InputError("testbed", f"every /{SUBNET_PREFIX} of {ADDRESS_POOL} is in use on this host")


def plan_topology(
    cluster: Cluster,
    options: TestbedOptions,
    tb_id: str,
    subnet: ipaddress.IPv4Network,
    host_cores: int,
) -> Topology:
    """The testbed of `cluster`; `InputError` when the host cannot emulate it as asked."""
    n = len(cluster.devices)
    if n > MAX_DEVICES:
        raise InputError(cluster.source, f"a testbed holds at most {MAX_DEVICES} devices", n)
    for name, value in (("scale", options.scale), ("memory_scale", options.memory_scale)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(name, "must be a positive number", value)
    budget = options.cpu_budget_cores
    if budget is None:
        budget = host_cores - HEAD_RESERVE_CORES
    if not (math.isfinite(budget) and 0 < budget <= host_cores):
        raise InputError("cpu_budget_cores", f"must be in (0, {host_cores}] cores (this host's)", budget)
    names = [safe_name(d.name) for d in cluster.devices]
    if len(set(names)) < n:
        clash = next(x for x in names if names.count(x) > 1)
        raise InputError(cluster.source, "two device names map to the same namespace name", clash)

    cores = cpu_cores(cluster, budget)
    hosts = list(subnet.hosts())
    head = str(hosts[0])
    addresses = {d.name: str(hosts[i + 1]) for i, d in enumerate(cluster.devices)}
    head_rate = _rate(cluster.default_link.bandwidth_mbps * options.scale, "network.bandwidth_mbps", cluster)
    nodes = []
    for i, dev in enumerate(cluster.devices):
        quota_us = round(cores[dev.name] * CPU_PERIOD_US)
        if quota_us < MIN_QUOTA_US:
            raise InputError(
                cluster.source,
                f"device {dev.name} would get {cores[dev.name]:.3f} cores, below the kernel's "
                f"minimum quota ({MIN_QUOTA_US / CPU_PERIOD_US:.1f} cores); raise the CPU budget or "
                "emulate fewer devices",
            )
        egress = [EgressClass(HEAD_CLASS, "", head, head_rate)]
        for j, other in enumerate(cluster.devices):
            if other.name != dev.name:
                mbps = cluster.link(dev.name, other.name).bandwidth_mbps * options.scale
                rate = _rate(mbps, f"link {dev.name}-{other.name}", cluster)
                egress.append(EgressClass(FIRST_DEVICE_CLASS + j, other.name, addresses[other.name], rate))
        nodes.append(
            DeviceNode(
                name=dev.name,
                index=i,
                netns=f"e2tb-{tb_id}-{names[i]}",
                host_veth=f"e2tb{tb_id}v{i}",
                address=addresses[dev.name],
                relative_speed=cores[dev.name] / max(cores.values()),
                cpu_cores=cores[dev.name],
                cpu_quota_us=quota_us,
                memory_limit_bytes=round(dev.memory_gb * options.memory_scale * 2**30) + NODE_OVERHEAD_BYTES,
                egress=tuple(egress),
                head_rate_mbps=head_rate,
                cgroup=f"dev-{names[i]}",
            )
        )
    return Topology(
        testbed_id=tb_id,
        subnet=str(subnet),
        bridge=f"e2tb{tb_id}br",
        head_address=head,
        head_cgroup="head",
        cgroup=f"e2tb-{tb_id}",
        devices=tuple(nodes),
    )


def _rate(mbps: float, what: str, cluster: Cluster) -> float:
    if mbps < MIN_RATE_MBPS:
        raise InputError(
            cluster.source,
            f"{what}: {mbps:g} Mbit/s once scaled is below what tc can shape ({MIN_RATE_MBPS} Mbit/s)",
        )
    return mbps


def emulated_cluster(
    cluster: Cluster, options: TestbedOptions, latency_ms: float, profiles: dict[str, str]
) -> Cluster:
    """The cluster as the testbed runs it, for the planner and the simulator: memory times
    `memory_scale`, every link's bandwidth times `scale`, the bridge's measured `latency_ms`
    (the testbed does not emulate the file's latencies), and `profiles` (device -> profile path)."""

    def link(old: Link) -> Link:
        return Link(bandwidth_mbps=old.bandwidth_mbps * options.scale, latency_ms=latency_ms)

    devices = tuple(
        replace(d, memory_gb=d.memory_gb * options.memory_scale, profile=profiles.get(d.name, d.profile))
        for d in cluster.devices
    )
    links = {pair: link(old) for pair, old in cluster.links.items()}
    return replace(cluster, devices=devices, default_link=link(cluster.default_link), links=links)

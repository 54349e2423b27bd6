"""What a running testbed looks like now: per device its namespace, link, Ray node, quotas."""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.testbed import cgroups, host
from e2llm.testbed.control import link_rates, raylet_pid
from e2llm.testbed.lifecycle import advertised
from e2llm.testbed.state import TestbedState

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    name: str
    netns: str
    address: str
    namespace_present: bool
    link_up: bool
    raylet_pid: int | None
    in_ray: bool  # a live Ray node advertises `device:<name>`
    cpu_cores: float
    memory_limit_gib: float
    memory_used_gib: float | None
    links_mbps: dict[str, float]  # peer ("head" for the head) -> the rate tc enforces now


@dataclass(frozen=True, slots=True)
class TestbedStatus:
    testbed_id: str
    address: str
    head_alive: bool
    devices: tuple[DeviceStatus, ...]
    __test__ = False

    @property
    def healthy(self) -> bool:
        return self.head_alive and all(d.in_ray and d.link_up for d in self.devices)


def status(state: TestbedState) -> TestbedStatus:
    topo = state.topology
    namespaces = host.namespaces()
    head = [p for p in state.processes if not p.device]
    head_alive = bool(head) and host.start_ticks(head[0].pid) == head[0].start_ticks
    in_ray = advertised(state, PROBE_TIMEOUT_S, [d.name for d in topo.devices]) if head_alive else set()
    rows = []
    for d in topo.devices:
        used = cgroups.memory_in_use(state.layout, f"{topo.cgroup}/{d.cgroup}")
        rows.append(
            DeviceStatus(
                name=d.name,
                netns=d.netns,
                address=d.address,
                namespace_present=d.netns in namespaces,
                link_up=host.link_is_up(d.host_veth),
                raylet_pid=raylet_pid(state, d.name),
                in_ray=d.name in in_ray,
                cpu_cores=d.cpu_cores,
                memory_limit_gib=d.memory_limit_bytes / 2**30,
                memory_used_gib=None if used is None else used / 2**30,
                links_mbps=link_rates(state, d.name) if d.netns in namespaces else {},
            )
        )
    return TestbedStatus(topo.testbed_id, state.address, head_alive, tuple(rows))

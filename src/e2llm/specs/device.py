"""Devices, links and clusters: the hardware a plan is made for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from e2llm.specs.units import GIB


@dataclass(frozen=True, slots=True)
class Device:
    """One edge/fog device. Numbers are what the device sustains for LLM inference."""

    name: str
    memory_gb: float  # accelerator / unified memory usable for weights + KV (GiB, specs/units.py)
    tflops: float  # dense FP16 (or FP32 shader, if that is what the runtime uses) TFLOP/s
    mem_bandwidth_gbs: float  # GB/s (1e9 bytes/s)
    host_memory_gb: float = 0.0
    preset: str | None = None
    profile: str | None = None  # path of a measured profile JSON (overrides the roofline)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GIB)


@dataclass(frozen=True, slots=True)
class Link:
    """A symmetric network link between two devices."""

    bandwidth_mbps: float  # megabit/s (1e6 bit/s)
    latency_ms: float

    def transfer_s(self, n_bytes: float) -> float:
        """Seconds to move `n_bytes` over this link alone (latency + serialisation)."""
        return self.latency_ms / 1e3 + n_bytes * 8 / (self.bandwidth_mbps * 1e6)


@dataclass(frozen=True)
class Cluster:
    """Devices plus the network between them; `links` holds per-pair overrides of `default_link`."""

    devices: tuple[Device, ...]
    default_link: Link
    links: Mapping[frozenset[str], Link] = field(default_factory=dict)
    source: str = field(default="<cluster>", compare=False)  # file it was read from, for error messages

    def link(self, a: str, b: str) -> Link:
        return self.links.get(frozenset((a, b)), self.default_link)

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

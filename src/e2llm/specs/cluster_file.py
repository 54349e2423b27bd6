"""The cluster YAML (DESIGN "Input files") <-> `Cluster`, with one-line errors for every bad field.

A device's `preset` fills `memory_gb`, `tflops`, `mem_bandwidth_gbs` and `host_memory_gb` from the
catalog; fields written in the file override the preset. `profile` paths are resolved relative to
the YAML file's folder. Links are symmetric; a link may override only one of bandwidth/latency, the
other comes from the network default.

`cluster_to_dict` / `cluster_from_dict` round-trip a `Cluster` through plain JSON-able data (plans
embed their cluster this way); the dict form has every field explicit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.fields import (
    REQUIRED,
    as_list,
    as_mapping,
    check_keys,
    field_where,
    get_number,
    get_str,
    read_yaml_mapping,
)
from e2llm.specs.presets import get_preset

_DEVICE_KEYS = ("name", "preset", "memory_gb", "host_memory_gb", "tflops", "mem_bandwidth_gbs", "profile")
_NETWORK_KEYS = ("bandwidth_mbps", "latency_ms", "links")
_LINK_KEYS = ("a", "b", "bandwidth_mbps", "latency_ms")
# Plausible ranges, ~1000x beyond real hardware either way: outside them the cost model's
# numbers overflow (memory_gb 1e300 -> inf bytes) or its times do (tflops 1e-300).
_BOUNDS: dict[str, tuple[float, float]] = {
    "memory_gb": (0.0, 1e6),  # GiB; > 0
    "host_memory_gb": (0.0, 1e6),  # GiB; >= 0
    "tflops": (1e-6, 1e6),
    "mem_bandwidth_gbs": (1e-6, 1e7),
    "bandwidth_mbps": (1e-3, 1e9),
    "latency_ms": (0.0, 1e6),  # >= 0
}


def load_cluster(path: str | Path) -> Cluster:
    """Read and validate a cluster YAML file."""
    p = Path(path)
    data = read_yaml_mapping(p, "cluster")
    return cluster_from_dict(data, source=str(p), base_dir=p.parent)


def cluster_from_dict(d: Mapping[str, Any], source: str, base_dir: Path | None = None) -> Cluster:
    """Validate plain data (parsed YAML or a plan's embedded cluster) into a `Cluster`.

    `source` names the file in error messages; relative `profile` paths are resolved against
    `base_dir` into absolute paths when it is given (left as written otherwise).
    """
    d = as_mapping(d, source)
    check_keys(d, ("devices", "network"), source)
    if "devices" not in d:
        raise InputError(field_where(source, "devices"), "missing required field")
    raw_devices = as_list(d["devices"], field_where(source, "devices"))
    if not raw_devices:
        raise InputError(field_where(source, "devices"), "needs at least one device", raw_devices)
    devices: list[Device] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_devices):
        where = field_where(field_where(source, "devices"), i)
        dev = _device(as_mapping(raw, where), where, base_dir)
        if dev.name in seen:
            raise InputError(field_where(where, "name"), "duplicate device name", dev.name)
        seen.add(dev.name)
        devices.append(dev)

    net_where = field_where(source, "network")
    if "network" not in d:
        raise InputError(net_where, "missing required field")
    net = as_mapping(d["network"], net_where)
    check_keys(net, _NETWORK_KEYS, net_where)
    default = Link(
        bandwidth_mbps=_number(net, "bandwidth_mbps", net_where),
        latency_ms=_number(net, "latency_ms", net_where),
    )
    links: dict[frozenset[str], Link] = {}
    links_where = field_where(net_where, "links")
    for i, raw in enumerate(as_list(net.get("links") or [], links_where)):
        where = field_where(links_where, i)
        pair, link = _link(as_mapping(raw, where), where, seen, default)
        if pair in links:
            raise InputError(where, "duplicate link for this device pair", "-".join(sorted(pair)))
        links[pair] = link
    return Cluster(devices=tuple(devices), default_link=default, links=links, source=source)


def _device(d: Mapping[str, Any], where: str, base_dir: Path | None) -> Device:
    check_keys(d, _DEVICE_KEYS, where)
    name = get_str(d, "name", where)
    preset_name = get_str(d, "preset", where) if d.get("preset") is not None else None
    base: dict[str, float] = {}  # preset values: defaults for the fields below
    if preset_name is not None:
        p = get_preset(preset_name, field_where(where, "preset"))
        base = {
            "memory_gb": p.memory_gb,
            "tflops": p.tflops,
            "mem_bandwidth_gbs": p.mem_bandwidth_gbs,
            "host_memory_gb": p.host_memory_gb,
        }
    profile = get_str(d, "profile", where) if d.get("profile") is not None else None
    if profile is not None and base_dir is not None and not Path(profile).is_absolute():
        profile = str((base_dir / profile).resolve())  # absolute: plans embed it, then move
    return Device(
        name=name,
        memory_gb=_number(d, "memory_gb", where, base.get("memory_gb", REQUIRED)),
        tflops=_number(d, "tflops", where, base.get("tflops", REQUIRED)),
        mem_bandwidth_gbs=_number(d, "mem_bandwidth_gbs", where, base.get("mem_bandwidth_gbs", REQUIRED)),
        host_memory_gb=_number(d, "host_memory_gb", where, base.get("host_memory_gb", 0.0)),
        preset=preset_name,
        profile=profile,
    )


def _number(d: Mapping[str, Any], key: str, where: str, default: Any = REQUIRED) -> float:
    """A field within its `_BOUNDS`; a lower bound of 0 is exclusive only for memory_gb."""
    low, high = _BOUNDS[key]
    strict = key == "memory_gb"
    return get_number(d, key, where, default=default, minimum=low, strict=strict, maximum=high)


def _link(d: Mapping[str, Any], where: str, names: set[str], default: Link) -> tuple[frozenset[str], Link]:
    check_keys(d, _LINK_KEYS, where)
    ends = []
    for key in ("a", "b"):
        name = get_str(d, key, where)
        if name not in names:
            raise InputError(field_where(where, key), "unknown device in link", name)
        ends.append(name)
    if ends[0] == ends[1]:
        raise InputError(field_where(where, "b"), "a link needs two different devices", ends[1])
    link = Link(
        bandwidth_mbps=_number(d, "bandwidth_mbps", where, default.bandwidth_mbps),
        latency_ms=_number(d, "latency_ms", where, default.latency_ms),
    )
    return frozenset(ends), link


def cluster_to_dict(cluster: Cluster) -> dict[str, Any]:
    """Plain data with every field explicit; `cluster_from_dict` gives back an equal `Cluster`."""
    devices = []
    for dev in cluster.devices:
        entry: dict[str, Any] = {"name": dev.name}
        if dev.preset is not None:
            entry["preset"] = dev.preset
        entry.update(
            memory_gb=dev.memory_gb,
            host_memory_gb=dev.host_memory_gb,
            tflops=dev.tflops,
            mem_bandwidth_gbs=dev.mem_bandwidth_gbs,
        )
        if dev.profile is not None:
            entry["profile"] = dev.profile
        devices.append(entry)
    links = [
        {"a": a, "b": b, "bandwidth_mbps": link.bandwidth_mbps, "latency_ms": link.latency_ms}
        for pair, link in cluster.links.items()
        for a, b in [sorted(pair)]
    ]
    network: dict[str, Any] = {
        "bandwidth_mbps": cluster.default_link.bandwidth_mbps,
        "latency_ms": cluster.default_link.latency_ms,
    }
    if links:
        network["links"] = links
    return {"devices": devices, "network": network}

"""Assembling the cost model of one model on one cluster: a timing source per device.

A device whose cluster entry names a `profile` is timed from that measured profile (scaled to
the model, see cost/profile_times.py); every other device from the roofline of its spec sheet
(cost/roofline.py) with the given engine efficiency, by default the llama.cpp efficiency of the
device's vendor class (cost/edge.py: Apple Metal, CUDA GeForce, Jetson; others the pooled fit).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from e2llm.cost.edge import edge_efficiency
from e2llm.cost.model import CostModel, DeviceTimes
from e2llm.cost.profile import Profile, load_profile
from e2llm.cost.profile_times import ProfileTimes
from e2llm.cost.roofline import Efficiency, RooflineTimes
from e2llm.specs.device import Cluster
from e2llm.specs.model_spec import ModelSpec


def resolve_profile_path(path: str, cluster: Cluster) -> Path:
    """A relative profile path is relative to the cluster file's folder (when the cluster came
    from a file), so a cluster and its profiles can be moved together."""
    p = Path(path)
    if p.is_absolute():
        return p
    source = Path(cluster.source)
    if source.is_file():
        return source.parent / p
    return p


def build_cost_model(
    model: ModelSpec,
    cluster: Cluster,
    *,
    profiles: Mapping[str, Profile] | None = None,
    efficiency: Efficiency | None = None,
) -> CostModel:
    """The cost model of `model` on `cluster`.

    `profiles` holds already-loaded profiles keyed by the `Device.profile` string; profiles not in
    it are read from disk, once per file even when several devices share one. Raises InputError
    for an unreadable or malformed profile, or one that cannot be scaled to `model`.
    `efficiency` None: each roofline device gets `edge_efficiency(device)`; an Efficiency: every
    roofline device gets that one.
    """
    loaded: dict[str, Profile] = dict(profiles or {})
    times: dict[str, DeviceTimes] = {}
    for d in cluster.devices:
        if d.profile is None:
            times[d.name] = RooflineTimes(d, model, efficiency or edge_efficiency(d))
            continue
        if d.profile not in loaded:
            loaded[d.profile] = load_profile(resolve_profile_path(d.profile, cluster))
        times[d.name] = ProfileTimes(loaded[d.profile], model)
    return CostModel(model=model, cluster=cluster, times=times)

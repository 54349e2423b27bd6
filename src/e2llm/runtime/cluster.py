"""Ray as the engine: start an embedded local instance or join a cluster of device nodes.

Every device of a plan is a Ray custom resource named `device:<name>`. On a real cluster each
physical device runs `ray start --address=HEAD:6379 --resources='{"device:<name>": 1}'`; locally
(`e2llm serve` without `--ray-address`) `ray.init` advertises all of them on this machine, so the
devices are emulated as local worker processes. A stage actor asks for a sliver of its device's
resource, which pins it to that node (see `docs/deploy.md`).

Token authentication stays as Ray sets it: Ray 2.60 turns it on for local clusters and generates
a token at `~/.ray/auth_token`; a joined cluster needs `RAY_AUTH_MODE=token` and the same token on
every node. Nothing here turns it off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from e2llm.errors import InputError

RESOURCE_PREFIX = "device:"
# Each stage actor takes this much of its device's resource, so several replicas' stages could
# share one device while the resource still pins them to its node.
ACTOR_RESOURCE_SHARE = 0.01


def device_resource(name: str) -> str:
    """The Ray custom resource that marks the node of device `name`."""
    return f"{RESOURCE_PREFIX}{name}"


def torch_threads_per_actor(n_actors: int, cores: int | None = None) -> int:
    """Torch threads for each of `n_actors` actors sharing `cores` cores (never below 1)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_actors))


def start_ray(device_names: Sequence[str], address: str | None = None) -> None:
    """Start (or join, with `address`) Ray so every device in `device_names` has a node.

    Joining checks that each device resource is advertised and raises `InputError` naming the
    missing ones with the `ray start` line that would provide them.
    """
    import ray

    if address is None:
        ray.init(
            resources={device_resource(n): 1.0 for n in device_names},
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError("ray_address", f"cannot join the Ray cluster: {e}", address) from None
    advertised = ray.cluster_resources()
    missing = [n for n in device_names if advertised.get(device_resource(n), 0) <= 0]
    if missing:
        ray.shutdown()
        example = f"ray start --address={address} --resources='{{\"{device_resource(missing[0])}\": 1}}'"
        raise InputError(
            "ray_address",
            f"no Ray node advertises device(s) {', '.join(missing)}; on each device run: {example}",
            address,
        )


def advertised_devices() -> set[str]:
    """The devices some live Ray node offers now (Ray must be initialised)."""
    import ray

    res = ray.cluster_resources()
    return {k.removeprefix(RESOURCE_PREFIX) for k, v in res.items() if k.startswith(RESOURCE_PREFIX) and v}


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()

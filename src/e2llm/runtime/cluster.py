"""Ray as the engine: start an embedded local instance or join a cluster of device nodes.

Every device of a plan is a Ray custom resource named `device:<name>`. On a real cluster each
physical device runs `ray start --address=HEAD:6379 --resources='{"device:<name>": 1}'`; locally
(`e2llm serve` without `--ray-address`) `ray.init` advertises all of them on this machine, so the
devices are emulated as local worker processes. A stage actor asks for a sliver of its device's
resource, which pins it to that node (see `docs/deploy.md`).

Token authentication stays as Ray sets it: Ray 2.60 turns it on for local clusters and generates
a token at `~/.ray/auth_token`; a joined cluster needs `RAY_AUTH_MODE=token` and the same token on
every node. Nothing here turns it off. The token file is a secret: Ray writes it with the
process's umask (world-readable, typically), so the embedded cluster starts under umask 077 and
any token file found readable by others is made owner-only (`protect_token_file`). A join that
fails says which setting to check (`join_hint`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from e2llm.errors import InputError

log = logging.getLogger(__name__)

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
        with _owner_only_files():  # the token Ray may generate, and this session's files
            ray.init(
                resources={device_resource(n): 1.0 for n in device_names},
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
        protect_token_file()
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = join_hint(address, _answers(address), os.environ)
        raise InputError("ray_address", f"cannot join the Ray cluster: {e}; {hint}", address) from None
    protect_token_file()
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


# ---- the token: a secret, and what to say when a join fails --------------------------------------
def token_file(env: Mapping[str, str]) -> Path:
    """The token file Ray reads (without `RAY_AUTH_TOKEN` in the environment)."""
    return Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def protect_token_file(env: Mapping[str, str] = os.environ) -> None:
    """Make the token file owner-only (0600) if it is ours and others may read it."""
    path = token_file(env)
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
            log.warning("the Ray token file %s was readable by others; it is now owner-only (0600)", path)


@contextlib.contextmanager
def _owner_only_files() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _answers(address: str) -> bool:
    """Whether something accepts TCP connections at HOST:PORT."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            return True
    except (OSError, ValueError):
        return False


def join_hint(address: str, answers: bool, env: Mapping[str, str]) -> str:
    """What to check when joining the Ray cluster at `address` failed."""
    if not answers:
        return f"nothing answers at {address}: is the head started (`ray start --head`) and its port open?"
    if env.get("RAY_AUTH_MODE", "").lower() != "token":
        return (
            "the cluster may require token authentication: set RAY_AUTH_MODE=token and give the "
            "cluster's token in RAY_AUTH_TOKEN or in a file named by RAY_AUTH_TOKEN_PATH "
            "(default ~/.ray/auth_token), see docs/deploy.md section 2"
        )
    source = "RAY_AUTH_TOKEN" if env.get("RAY_AUTH_TOKEN") else f"the token file {token_file(env)}"
    return f"check that {source} holds the cluster's token and that this machine runs its Ray version"

"""The record of what `testbed up` made, so that `down` removes exactly that and nothing else.

One folder per testbed, `<state dir>/<id>/` (state dir: `$E2LLM_TESTBED_DIR`, default
`/run/e2llm-testbed`, which like the namespaces does not survive a reboot): `state.json`, the
Ray token (`auth_token`, mode 0600), `env.sh` for a driver, and the nodes' logs. `state.json` is
written before anything is built and again after every node starts, so a failed `up` leaves a
record `down` can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from e2llm.errors import InputError
from e2llm.testbed.cgroups import CgroupLayout
from e2llm.testbed.raynodes import node_env
from e2llm.testbed.topology import TestbedOptions, Topology

STATE_DIR_ENV = "E2LLM_TESTBED_DIR"
DEFAULT_STATE_DIR = "/run/e2llm-testbed"


@dataclass(frozen=True, slots=True)
class NodeProcess:
    device: str  # "" for the head
    pid: int  # `ray start --block`, leader of its own process group
    start_ticks: int  # with the pid, identifies the process even after the pid is reused
    log: str


@dataclass(frozen=True, slots=True)
class TestbedState:
    cluster_path: str
    options: TestbedOptions
    topology: Topology
    layout: CgroupLayout
    folder: str
    temp_dir: str  # Ray's session files (short: Ray's socket paths must fit 107 bytes)
    gcs_port: int = 0
    processes: tuple[NodeProcess, ...] = ()
    __test__ = False

    @property
    def address(self) -> str:
        """The Ray address a driver joins: `e2llm serve ... --ray-address` this."""
        return f"{self.topology.head_address}:{self.gcs_port}"

    @property
    def token_path(self) -> str:
        return str(Path(self.folder) / "auth_token")

    @property
    def env(self) -> dict[str, str]:
        """What a driver's environment needs to join the testbed (token authentication)."""
        return node_env(self.token_path)


_ADAPTER = TypeAdapter(TestbedState)


def state_root() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def state_file(folder: Path) -> Path:
    return folder / "state.json"


def save(state: TestbedState) -> None:
    path = state_file(Path(state.folder))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_ADAPTER.dump_json(state, indent=2))
    tmp.replace(path)


def load(folder: Path, cluster_path: str) -> TestbedState:
    """The state of the testbed in `folder`; `InputError` if there is none."""
    path = state_file(folder)
    if not path.is_file():
        raise InputError(cluster_path, f"no testbed of this cluster is up (no {path})")
    try:
        return _ADAPTER.validate_json(path.read_bytes())
    except (ValidationError, ValueError) as e:
        first = str(e).splitlines()[0]
        raise InputError(str(path), f"not a testbed state file: {first}") from None


def write_secret(path: Path, text: str) -> None:
    """Create `path` readable by its owner only (created with that mode: never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

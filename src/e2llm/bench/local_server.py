"""A live `e2llm serve` on this machine for the duration of a `with` block: start it as a child
process, wait until `/health` answers, and always stop it.

Tests, benchmarks and experiments that drive a real server all start it here (it lives in the
package, next to the load generator they drive it with, so that none of them needs another's
folder on its path). The server runs in its own process group: stopping it (SIGINT, so that it
shuts its Ray instance down, then SIGKILL after a grace period) reaches only it and the Ray
processes it started, never another Ray instance on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import httpx

READY_TIMEOUT_S = 240.0  # model preparation + Ray start + every stage actor loading its weights
STOP_GRACE_S = 60.0
LOG_TAIL_CHARS = 3000


class ServerFailed(RuntimeError):
    """`e2llm serve` exited, or did not answer `/health` in time; the message ends with its log."""


class LocalServer(NamedTuple):
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_server(
    args: Sequence[str],
    log: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[LocalServer]:
    """Run `e2llm serve ARGS --port PORT` (a free port by default; output to `log`) and yield it
    once `/health` answers 200. Raises `ServerFailed` if it exits or is not ready in time."""
    port = port or free_port()
    exe = Path(sys.executable).parent / "e2llm"
    cmd = [str(exe), "serve", *args, "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    server = LocalServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_ready(server, ready_timeout_s)
        yield server
    finally:
        stop(proc)


@contextlib.contextmanager
def serving_plan(
    plan: Mapping[str, Any], folder: Path, args: Sequence[str] = (), **options: Any
) -> Iterator[LocalServer]:
    """`local_server` of `plan` (plan JSON as a dict, written to `folder/plan.json`), logging to
    `folder/serve.log`; `options` as for `local_server`."""
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    with local_server([str(path), *args], folder / "serve.log", **options) as server:
        yield server


def wait_ready(server: LocalServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            raise ServerFailed(f"e2llm serve exited with {server.process.returncode}:\n{_tail(server.log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ServerFailed(f"e2llm serve not ready after {timeout_s:.0f} s:\n{_tail(server.log)}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the server's process group (it shuts down and stops its Ray), then SIGKILL
    if it has not exited within `STOP_GRACE_S`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""

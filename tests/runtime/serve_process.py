"""Start a live `e2llm serve PLAN.json` subprocess for a test and always stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(
    workdir: Path,
    plan: dict[str, Any],
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Yield (base URL, process, log path) once `/health` answers; stop with SIGINT, then kill."""
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(plan))
    port = free_port()
    log = workdir / "serve.log"
    cmd = [str(Path(sys.executable).parent / "e2llm"), "serve", str(plan_path), "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"e2llm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"e2llm serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

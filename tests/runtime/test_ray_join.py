"""Joining a Ray cluster that wants a token, without one: `e2llm serve --ray-address` must exit 2
with one line of its own that names the missing setting (it used to say only "cannot join").

The head is a real `ray start --head --block` on loopback with token authentication, in its own
process group (stopped by signalling that group: no `ray stop`, which would stop every Ray on
the host). The client runs with a fresh HOME, so it has no token file to fall back on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2llm.runtime.weights import CACHE_ENV, default_cache_dir
from e2llm.testbed.raynodes import free_port, gcs_listening, ray_executable

pytestmark = pytest.mark.slow

PLAN = {
    "system": "test",
    "model": "smollm2-135m",
    "objective": 0.0,
    "replicas": [{"id": 0, "role": "COLOCATED", "devices": [{"name": "cpu0", "layers": [0, 30]}]}],
}


@pytest.fixture
def token_head(tmp_path: Path) -> Iterator[str]:
    token = tmp_path / "auth_token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    port = free_port()
    ray_dir = tempfile.mkdtemp(prefix="e2join", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    cmd = [
        ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
        "--num-cpus", "0", "--resources", json.dumps({"device:cpu0": 1}),
        "--temp-dir", ray_dir,
    ]  # fmt: skip
    with open(tmp_path / "head.log", "wb") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not gcs_listening("127.0.0.1", port):
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_joining_a_token_cluster_without_the_token_names_the_setting(tmp_path: Path, token_head: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), **{CACHE_ENV: str(default_cache_dir())})
    exe = Path(sys.executable).parent / "e2llm"
    cmd = [str(exe), "serve", str(plan), "--ray-address", token_head]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("e2llm serve: error:")]
    assert len(ours) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "cannot join the Ray cluster" in ours[0] and "RAY_AUTH_MODE=token" in ours[0], ours
    assert "RAY_AUTH_TOKEN" in ours[0] and token_head in ours[0], ours

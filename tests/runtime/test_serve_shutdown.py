"""Ctrl-C on a live `e2llm serve` (real Ray, real SmolLM2) while requests run, and its secrets.

SIGINT goes to the server's whole process group, as a terminal's Ctrl-C does. With `--drain-s 30`
a short request still completes, the two that would run for minutes (one streaming, one not)
end with an explicit "shutting down" error, and the process exits 0 without a traceback,
leaving no Ray process behind. The server runs with a fresh HOME, so the Ray token it generates
is a new file: it must be owner-only (0600).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2llm.bench.local_server import serving_plan
from e2llm.runtime.service import SHUTTING_DOWN
from e2llm.runtime.weights import CACHE_ENV, default_cache_dir

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
DRAIN_S = 30  # ample for 4 tokens even on a loaded box (Ray workers run at nice 15)
EXIT_BOUND_S = 150.0  # drain + Ray teardown on a busy box; the long requests would take an hour
PLAN = json.loads((Path(__file__).resolve().parents[2] / "examples/plans/local-colocated.json").read_text())


def _request(url: str, max_tokens: int, stream: bool, out: dict[str, Any], started: threading.Event) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True}
    with httpx.Client(timeout=300) as c:
        if not stream:
            started.set()
            r = c.post(f"{url}/v1/completions", json=body)
            out.update(status=r.status_code, body=r.json())
            return
        with c.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    out.update(status=r.status_code, body=json.loads(line[6:]))
                    started.set()


def _group(pgid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getpgid(int(p.name)) == pgid:
                    pids.append(int(p.name))
            except ProcessLookupError:
                pass
    return pids


def test_ctrl_c_drains_then_ends_the_rest_and_exits_0(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), CACHE_ENV: str(default_cache_dir())}  # the prepared model, not a new one
    with serving_plan(PLAN, tmp_path, ["--drain-s", str(DRAIN_S)], env=env) as server:
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600  # the token Ray generated for this cluster
        results: list[dict[str, Any]] = [{}, {}, {}]
        threads = []
        kinds = [(4000, False), (4000, True), (4, False)]  # (max_tokens, stream)
        for out, (max_tokens, stream) in zip(results, kinds, strict=True):
            started = threading.Event()
            thread = threading.Thread(target=_request, args=(server.url, max_tokens, stream, out, started))
            thread.start()
            assert started.wait(60)
            threads.append(thread)
        time.sleep(0.5)  # the short one is on its way too
        group = _group(server.process.pid)
        t0 = time.monotonic()
        os.killpg(server.process.pid, signal.SIGINT)
        server.process.wait(timeout=EXIT_BOUND_S)
        took = time.monotonic() - t0
        for thread in threads:
            thread.join(30)
    long_plain, long_stream, short = results
    assert server.process.returncode == 0
    assert short["status"] == 200 and short["body"]["usage"]["completion_tokens"] == 4, short
    assert long_plain["status"] == 503 and long_plain["body"]["error"]["message"] == SHUTTING_DOWN, long_plain
    assert long_stream["body"]["error"]["message"] == SHUTTING_DOWN, long_stream  # its last SSE event
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert "2 requests still in flight ended with 503" in log, log[-3000:]
    deadline = time.monotonic() + 30
    while (left := _group(server.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left and len(group) > 3, (left, group)  # Ray's processes went with it
    print(f"shutdown figures: exit {took:.1f} s after SIGINT (drain {DRAIN_S} s)")

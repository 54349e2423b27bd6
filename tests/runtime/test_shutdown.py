"""Shutting down on SIGINT/SIGTERM: a bounded drain, then what is left ends with an explicit 503,
and the process exits 0 without a traceback; a second signal skips the drain.

The server is a real `serve_http` (uvicorn with e2llm's shutdown) in a child process, over the
fake deployment of `httpkit` (no Ray, no model: seconds). `test_serve_shutdown.py` does the same
to a live `e2llm serve` with Ray.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpkit import MODEL, free_port

from e2llm.bench.local_server import LocalServer, stop, wait_ready
from e2llm.runtime.service import SHUTTING_DOWN

HERE = Path(__file__).parent
BOUND_S = 30.0  # generous: the drains below are 2 s, the long requests would run for minutes
SCRIPT = """
    import sys
    sys.path.insert(0, {here!r})
    from httpkit import SlowEcho, served_model
    from e2llm.cli.logs import configure_logging
    from e2llm.runtime.http_serve import serve_http
    from e2llm.runtime.server import create_app

    configure_logging("info")
    deployment = SlowEcho()
    app = create_app(deployment, served_model())
    serve_http(app, deployment, {drain}, host="127.0.0.1", port={port}, log_level="warning")
    print("serve_http returned", flush=True)
"""


@contextmanager
def fake_server(tmp_path: Path, drain_s: float) -> Iterator[LocalServer]:
    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(SCRIPT).format(here=str(HERE), drain=drain_s, port=port))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LocalServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_ready(server, 60)
        yield server
    finally:
        stop(proc)


class Client(threading.Thread):
    """One request in the background; `result` is (status, text, last SSE event or JSON body)."""

    def __init__(self, url: str, max_tokens: int, stream: bool):
        super().__init__(daemon=True)
        self.body = {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "stream": stream}
        self.url, self.stream = url, stream
        self.started = threading.Event()
        self.result: tuple[int, str, Any] | None = None

    def run(self) -> None:
        with httpx.Client(timeout=120) as c:
            if not self.stream:
                self.started.set()
                r = c.post(f"{self.url}/v1/completions", json=self.body)
                self.result = (r.status_code, "", r.json())
                return
            with c.stream("POST", f"{self.url}/v1/completions", json=self.body) as r:
                text, last = "", None
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        last = json.loads(line[6:])
                        text += "".join(ch["text"] for ch in last.get("choices", []))
                        self.started.set()
                self.result = (r.status_code, text, last)


def _shut(server: LocalServer, signals: list[signal.Signals], gap_s: float = 0.5) -> float:
    """Send `signals` (`gap_s` apart) and return how long the process took to exit."""
    t0 = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap_s)
        server.process.send_signal(sig)
    server.process.wait(timeout=BOUND_S)
    return time.monotonic() - t0


def _ended_by_shutdown(client: Client) -> bool:
    assert client.result is not None
    status, _, body = client.result
    error = (body or {}).get("error", {})
    return error.get("message") == SHUTTING_DOWN and (status == 503 if not client.stream else status == 200)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_drain_lets_short_requests_finish_and_ends_the_rest(tmp_path: Path, sig: signal.Signals) -> None:
    with fake_server(tmp_path, drain_s=2.0) as server:
        short = Client(server.url, max_tokens=20, stream=False)  # 1 s of tokens
        long = [Client(server.url, max_tokens=4000, stream=s) for s in (False, True)]  # 200 s each
        for c in (short, *long):
            c.start()
            assert c.started.wait(10)
        took = _shut(server, [sig])
        for c in (short, *long):
            c.join(10)
        assert server.process.returncode == 0, server.log.read_text()
        assert short.result is not None and short.result[0] == 200
        assert short.result[2]["choices"][0]["text"] == "abcdefghijklmnopqrst"
        assert all(_ended_by_shutdown(c) for c in long), [c.result for c in long]
        assert took < BOUND_S
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2)
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "2 requests still in flight ended with 503" in log and "serve_http returned" in log, log


def test_a_second_signal_ends_everything_at_once(tmp_path: Path) -> None:
    with fake_server(tmp_path, drain_s=60.0) as server:
        long = [Client(server.url, max_tokens=4000, stream=s) for s in (False, True)]
        for c in long:
            c.start()
            assert c.started.wait(10)
        took = _shut(server, [signal.SIGINT, signal.SIGINT])
        for c in long:
            c.join(10)
        assert server.process.returncode == 0, server.log.read_text()
        assert took < 60.0 / 2  # the 60 s drain was skipped
        assert all(_ended_by_shutdown(c) for c in long), [c.result for c in long]
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "second signal: 2 requests still in flight ended with 503" in log, log

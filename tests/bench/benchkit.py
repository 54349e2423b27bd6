"""A minimal scripted HTTP server for the bench client's tests (no model behind it).

It stands in for a server only to exercise the client: error paths (500s, stalls, broken
streams) and client-side timing against known delays. Real serving is tested against
`e2llm serve` in test_bench_serve.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Script:
    """How the server answers POST /v1/completions."""

    status: int = 200
    first_delay_s: float = 0.0  # before the headers and the first token
    gap_s: float = 0.0  # between tokens
    stall_s: float = 0.0  # sleep after the first token (to trigger client timeouts)
    queue_s: float | None = 0.125  # x-e2llm-queue-s header value
    empty_first: int = 0  # the first this many tokens come with empty text (partial characters)


def _handler(script: Script, seen: list[dict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/metrics":  # 0.25 s of waiting and half a role switch per request so far
                n = len(seen)
                text = f"# TYPE e2llm_waiting_seconds histogram\ne2llm_waiting_seconds_sum {0.25 * n}\n"
                text += f"e2llm_waiting_seconds_count {n}\nbroken_line\ne2llm_ttft_seconds_sum oops\n"
                text += f'e2llm_role_switches_total{{replica="1",role="PREFILL"}} {n // 2 + 3}\n'
                data = text.encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append(body)
            if script.status != 200:
                self._json(script.status, {"error": {"message": "scripted failure", "type": "server_error"}})
                return
            time.sleep(script.first_delay_s)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            if script.queue_s is not None:
                self.send_header("x-e2llm-queue-s", f"{script.queue_s}")
            self.send_header("connection", "close")
            self.end_headers()
            n = int(body["max_tokens"])
            for i in range(n):
                if i:
                    time.sleep(script.gap_s)
                text = "" if i < script.empty_first else f" t{i}"
                chunk = {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if i == 0 and script.stall_s:
                    time.sleep(script.stall_s)
            usage = {"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up early (the timeout tests) is expected, not an error


@contextmanager
def scripted_server(script: Script) -> Iterator[tuple[str, list[dict]]]:
    """(base URL, list of request bodies received) of a server running `script`."""
    seen: list[dict] = []
    server = _QuietServer(("127.0.0.1", 0), _handler(script, seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()

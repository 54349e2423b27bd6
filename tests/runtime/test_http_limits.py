"""HTTP hardening against a real uvicorn server (the hardened h11 protocol) in a thread, over a fake
deployment that spells out tokens slowly: no Ray, no model, a few seconds in all.

Each hostile client (oversized, chunked oversized, trickled body, trickled headers, silent
connection, deep or huge-number JSON, too many at once, no key) gets its 4xx or is cut off, and
`/health` answers right after every one.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from httpkit import MODEL, SlowEcho, free_port, running, served_model

from e2llm.runtime.http_access import LOOPBACK_HOSTS
from e2llm.runtime.http_limits import HttpLimits
from e2llm.runtime.server import create_app

KEY = "k3y"
LIMITS = HttpLimits(max_body_bytes=8192, max_inflight=2, header_timeout_s=0.6, body_timeout_s=0.6)
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    app = create_app(SlowEcho(), served_model(), KEY, LIMITS, LOOPBACK_HOSTS)  # type: ignore[arg-type]
    port = free_port()
    with running(app, LIMITS, port) as url:
        yield url, port


def _healthy(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def _completion(url: str, max_tokens: int = 3, **kw: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, **kw}
    return httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=30)


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_normal_request_works(server: tuple[str, int]) -> None:
    r = _completion(server[0])
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "abc"


def test_oversized_body_gets_413(server: tuple[str, int]) -> None:
    url = server[0]
    r = _completion(url, prompt="x" * 10_000)
    assert _error(r, 413)["code"] == "request_too_large"
    _healthy(url)


def test_oversized_chunked_body_gets_413(server: tuple[str, int]) -> None:
    url = server[0]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"model": "fake", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(f"{url}/v1/completions", content=chunks(), headers=AUTH, timeout=10)
    assert _error(r, 413)["code"] == "request_too_large"
    _healthy(url)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 2000 + b"]" * 2000,
        b'{"model": "fake", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",
        b"\xff\xfe",
    ],
    ids=["deep-nesting", "huge-integer", "not-utf8"],
)
def test_unparsable_json_gets_400(server: tuple[str, int], raw: bytes) -> None:
    url = server[0]
    r = httpx.post(f"{url}/v1/chat/completions", content=raw, headers=AUTH, timeout=10)
    assert _error(r, 400)["code"] == "invalid_json"
    _healthy(url)


def test_out_of_range_seed_gets_400(server: tuple[str, int]) -> None:
    url = server[0]
    assert _error(_completion(url, seed=2**80), 400)["param"] == "seed"
    _healthy(url)


def test_missing_or_wrong_key_gets_401_without_taking_a_slot(server: tuple[str, int]) -> None:
    url = server[0]
    body = {"model": MODEL, "prompt": "hi"}
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": KEY}):
        r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=10)
        assert _error(r, 401)["code"] == "invalid_api_key"
    _healthy(url)


def test_too_many_in_flight_gets_429_with_retry_after(server: tuple[str, int]) -> None:
    url = server[0]
    n = LIMITS.max_inflight + 3
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda _: _completion(url, max_tokens=20), range(n)))
    ok = [r for r in answers if r.status_code == 200]
    busy = [r for r in answers if r.status_code == 429]
    assert len(ok) >= LIMITS.max_inflight and len(ok) + len(busy) == n and busy, [
        r.status_code for r in answers
    ]
    assert all(
        r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error" for r in busy
    )
    assert _completion(url).status_code == 200  # slots come back once requests end
    _healthy(url)


def test_a_stream_holds_its_slot_until_it_ends(server: tuple[str, int]) -> None:
    url = server[0]
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 30, "stream": True}
    with httpx.Client(timeout=30) as c1, httpx.Client(timeout=30) as c2:
        with (
            c1.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH) as s1,
            c2.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH) as s2,
        ):
            lines = [s1.iter_lines(), s2.iter_lines()]  # kept: a dropped iterator closes its stream
            assert all(next(it).startswith("data: ") for it in lines)
            assert _completion(url).status_code == 429
        # Both clients left mid-stream: their slots are free again.
        deadline = time.monotonic() + 5
        while (r := _completion(url)).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 200


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_headers_are_cut_off(server: tuple[str, int]) -> None:
    url, port = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.monotonic()
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        cut = False
        for byte in head:  # one byte every 0.1 s keeps stock uvicorn waiting forever
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.1)
        assert cut or _closed_within(sock, 1.0)
        assert time.monotonic() - t0 < LIMITS.header_timeout_s + 1.5
    _healthy(url)


def test_silent_connection_is_closed(server: tuple[str, int]) -> None:
    url, port = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _closed_within(sock, LIMITS.header_timeout_s + 1.0)
    _healthy(url)


def test_slow_body_gets_408(server: tuple[str, int]) -> None:
    url, port = server
    body = json.dumps({"model": MODEL, "prompt": "hi"}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body[:5])  # then nothing: the body never completes
        sock.settimeout(LIMITS.body_timeout_s + 2)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    _healthy(url)


def test_keep_alive_connection_gets_a_new_head_deadline(server: tuple[str, int]) -> None:
    url, port = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request's head never completes
        assert _closed_within(sock, LIMITS.header_timeout_s + 1.0)
    _healthy(url)

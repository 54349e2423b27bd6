"""What keeps hostile or overeager HTTP clients from holding the server.

- `read_json_body`: the request body, read in chunks up to `max_body_bytes` (413 beyond, checked
  against `Content-Length` first and again while reading, for chunked bodies) within
  `body_timeout_s` (408 for a body that trickles in), parsed as JSON (400 for anything that is not
  valid JSON, including nesting too deep for Python's parser and integers of thousands of digits).
- `InflightLimiter`: an ASGI middleware that admits at most `max_inflight` generation requests
  (`POST /v1/...`) at once, counting from the first byte of the request to the last byte of the
  response (a stream holds its slot until it ends); beyond that, `429` with `Retry-After`. While
  the server is unavailable (`unavailable()` returns a reason: shutting down, no live replica),
  `503` with `Retry-After`.
- `hardened_h11`: uvicorn's h11 protocol plus a header deadline: a connection must deliver a
  complete request head within `header_timeout_s` of opening (or of its previous response), else
  it is closed. Stock uvicorn has no such timer (its keep-alive timer is cancelled by any byte
  received), so a client sending one header byte a second would hold a connection forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2llm.runtime.openai_protocol import ApiError

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_INFLIGHT = 256
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_TOKENIZER_THREADS = 2
DEFAULT_TOKENIZER_QUEUE_CHARS = 8 << 20  # about eight 1 MB prompts waiting
RETRY_AFTER_S = 1
_INVALID = "invalid_request_error"


@dataclass(frozen=True)
class HttpLimits:
    """The server's limits; every one must be positive."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    tokenizer_threads: int = DEFAULT_TOKENIZER_THREADS  # tokenising off the event loop (`cpu_pool`)
    tokenizer_queue_chars: int = (
        DEFAULT_TOKENIZER_QUEUE_CHARS  # prompt text being tokenised or waiting; more: 503
    )


async def read_json_body(request: Any, limits: HttpLimits) -> Any:
    """The body of a Starlette `request` as parsed JSON, within the size and time limits."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _too_large(limits)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise _too_large(limits)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, f"request body not received within {limits.body_timeout_s:g} s", _INVALID, None, "timeout"
        ) from None
    try:
        return json.loads(b"".join(chunks), parse_constant=_not_json)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digits
        message = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise ApiError(400, f"malformed JSON body: {message}", _INVALID, None, "invalid_json") from None


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's parser takes NaN and Infinity; JSON does not


def _too_large(limits: HttpLimits) -> ApiError:
    return ApiError(
        413, f"request body larger than {limits.max_body_bytes} bytes", _INVALID, None, "request_too_large"
    )


class InflightLimiter:
    """ASGI middleware: at most `max_inflight` concurrent `POST /v1/...` requests (see module)."""

    def __init__(self, app: Any, max_inflight: int, unavailable: Callable[[], str | None] = lambda: None):
        self.app = app
        self.max_inflight = max_inflight
        self.unavailable = unavailable
        self.inflight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        reason = self.unavailable()
        if reason is not None:
            await _reject(send, 503, f"server unavailable: {reason}", "server_error", "unavailable")
            return
        if self.inflight >= self.max_inflight:
            message = f"too many requests in flight (limit {self.max_inflight}); retry later"
            await _reject(send, 429, message, "rate_limit_error", "rate_limit_exceeded")
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _reject(send: Any, status: int, message: str, type_: str, code: str) -> None:
    body = json.dumps(ApiError(status, message, type_, None, code).body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def hardened_h11(header_timeout_s: float) -> type:
    """uvicorn's `H11Protocol` with a deadline for each request head (see module)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HardenedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request head is complete
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()  # the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HardenedH11Protocol

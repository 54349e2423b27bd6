"""Running the API under uvicorn with a bounded shutdown.

On SIGINT or SIGTERM the listener closes and new requests get 503, while the requests in flight
get up to `drain_s` seconds to finish. Then whatever is left is ended with an explicit 503 (an
error object, or a last SSE error event on a stream), connections that still hold on are closed
after `FLUSH_S`, the deployment stops, and `serve_http` returns (the command exits 0). A second
signal skips the drain: the same ending, at once.

Stock uvicorn waits for every connection without a time limit (a long generation keeps the
process alive for as long as it runs), re-raises the signal when it is done (a KeyboardInterrupt
traceback, or death by SIGTERM), and on a second Ctrl-C cancels the request tasks and the
lifespan mid-flight, which logs a CancelledError traceback for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Protocol

import uvicorn

log = logging.getLogger(__name__)

FLUSH_S = 1.0  # after the requests are ended: time for their last bytes, before connections close
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Drainable(Protocol):
    def begin_shutdown(self) -> int: ...  # refuse new requests; returns those in flight
    def abort(self) -> int: ...  # end those in flight with a 503; returns how many


class DrainingServer(uvicorn.Server):
    """`uvicorn.Server` with the shutdown described in the module docstring."""

    def __init__(self, config: uvicorn.Config, deployment: Drainable, drain_s: float):
        config.timeout_graceful_shutdown = math.ceil(drain_s + 3 * FLUSH_S)  # last resort: cancel tasks
        super().__init__(config)
        self.deployment = deployment
        self.drain_s = drain_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Our handlers while serving; unlike uvicorn's, the signal is not raised again after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self.should_exit = True  # the main loop notices and calls `shutdown`
            return
        self.force_exit = True  # a second signal: uvicorn stops waiting for connections
        if self._loop is not None:  # a signal handler must not touch the loop's state itself
            self._loop.call_soon_threadsafe(self._end_requests, "second signal")

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def shutdown(self, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        waiting = self.deployment.begin_shutdown()
        log.info(
            "shutting down: %d requests in flight get up to %g s to finish (a second Ctrl-C stops now)",
            waiting,
            self.drain_s,
        )
        timer = loop.call_later(self.drain_s, self._end_requests, "drain time over")
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()
        if self.force_exit:  # uvicorn skipped the rest: let the requests end, then stop the app
            await self._wait_for_requests(FLUSH_S)
            self._close_connections()
            await self._wait_for_requests(FLUSH_S)
            await self.lifespan.shutdown()
        log.info("HTTP server stopped")

    def _end_requests(self, why: str) -> None:
        if self._ended:
            return
        self._ended = True
        ended = self.deployment.abort()
        if ended:
            log.warning("%s: %d requests still in flight ended with 503", why, ended)
        if self._loop is not None:
            self._loop.call_later(FLUSH_S, self._close_connections)

    def _close_connections(self) -> None:
        """Close what still holds a connection (e.g. a client that stopped reading its stream):
        its handler then sees a disconnect and ends normally, instead of being cancelled."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()

    async def _wait_for_requests(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.server_state.tasks:
                    await asyncio.sleep(0.05)


def serve_http(app: Any, deployment: Drainable, drain_s: float, **uvicorn_options: Any) -> None:
    """Serve `app` until SIGINT/SIGTERM, then shut down as the module says. Blocks."""
    config = uvicorn.Config(app, **uvicorn_options)
    DrainingServer(config, deployment, drain_s).run()

"""A real uvicorn server (the hardened h11 protocol) in a thread, serving `create_app` over a fake
deployment that spells out tokens slowly: the HTTP layer's tests without Ray or a model.

`SlowEcho` answers 'a', 'b', 'c', ... one token per `TOKEN_DELAY_S` and keeps every generation it
was given (`gens`), so a test can check that a request it abandoned was cancelled.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from e2llm.runtime.generation import Generation
from e2llm.runtime.http_limits import HttpLimits, hardened_h11
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.server import ServedModel
from e2llm.runtime.service import SHUTTING_DOWN

MODEL = "fake"
TOKEN_DELAY_S = 0.05


class CharTokenizer:
    """One token per character (id = code point mod 256)."""

    def __len__(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 256 for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def served_model(tokenizer: Any = None, context_len: int = 4096) -> ServedModel:
    tok = tokenizer or CharTokenizer()
    return ServedModel(MODEL, tok, context_len, frozenset(), lambda t, msgs: t.encode(msgs[-1]["content"]))


class SlowEcho:
    """A `Deployment` stand-in (see module)."""

    def __init__(self) -> None:
        self.metrics = ServingMetrics()
        self.tasks: set[asyncio.Task[None]] = set()
        self.gens: list[Generation] = []
        self.closing = False

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def replan(self) -> bool:
        return False

    def unavailable_reason(self) -> str | None:
        return "shutting down" if self.closing else None

    async def status(self) -> dict[str, Any]:
        return {"status": "ok", "plan_generation": 0, "devices": ["cpu0"], "replan_error": None}

    def submit(self, gen: Generation) -> None:
        self.gens.append(gen)
        task = asyncio.get_running_loop().create_task(self._run(gen))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, gen: Generation) -> None:
        i = 0
        while not gen.done:
            await asyncio.sleep(TOKEN_DELAY_S)
            gen.add_token(ord("a") + i % 26)
            i += 1

    async def stage_stats(self) -> list[dict[str, Any]]:
        return []

    def begin_shutdown(self) -> int:
        self.closing = True
        return sum(not g.done for g in self.gens)

    def abort(self) -> int:
        left = [g for g in self.gens if not g.done]
        for gen in left:
            gen.fail(SHUTTING_DOWN, 503)
        return len(left)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: FastAPI, limits: HttpLimits | None = None, port: int | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 in a thread for the `with` block; yields its base URL."""
    port = port or free_port()
    limits = limits or HttpLimits()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", http=hardened_h11(limits.header_timeout_s)
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)

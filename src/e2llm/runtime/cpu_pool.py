"""CPU work of the HTTP layer (tokenising prompts, applying chat templates) off the event loop.

A megabyte of prompt takes the tokenizer a good fraction of a second; on the event loop that
stalls every stream the server is sending. `CpuPool` runs such calls on a few threads, and
bounds what may wait for them: beyond `threads + queue` calls at once, `run` refuses at once
(`PoolFull`, a 503 with Retry-After for the client) instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class PoolFull(Exception):
    """Every thread is busy and the queue is full."""


class CpuPool:
    def __init__(self, threads: int, queue: int):
        self.capacity = threads + queue
        self.pending = 0  # calls running or queued
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="e2llm-cpu")

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`fn(*args, **kwargs)` on a pool thread; `PoolFull` if the pool is at capacity."""
        if self.pending >= self.capacity:
            raise PoolFull(f"{self.pending} calls running or queued")
        loop = asyncio.get_running_loop()
        self.pending += 1
        future = self._executor.submit(functools.partial(fn, *args, **kwargs))
        # counted until the thread is done with it, even if the caller stops waiting (a client
        # that left): a call already running cannot be stopped, so it still takes its place
        future.add_done_callback(lambda _: self._done_in(loop))
        return await asyncio.wrap_future(future)

    def _done_in(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to count
            loop.call_soon_threadsafe(self._count_done)

    def _count_done(self) -> None:
        self.pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

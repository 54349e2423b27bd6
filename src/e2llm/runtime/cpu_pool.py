"""CPU work of the HTTP layer (tokenising prompts, applying chat templates) off the event loop.

A megabyte of prompt takes the tokenizer a good fraction of a second; on the event loop that
stalls every stream the server is sending. `CpuPool` runs such calls on a few threads and bounds
the work waiting for them by its size (`cost`: the characters to tokenise), not by the number of
calls: a burst of two hundred short prompts passes, a pile of megabyte prompts does not. Beyond
`max_pending_cost` (running and queued together), `run` refuses at once (`PoolFull`, a 503 with
Retry-After for the client) instead of queueing without limit; an idle pool takes any one call.
The threads run at `niceness` (Linux: per thread), by default that of Ray's workers, so that
tokenising a pile of prompts cannot starve the stage workers on the same machine of CPU (nor
the event loop, which keeps the API process's own priority).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
WORKER_NICENESS = 15  # Ray's default for its worker processes (`RAY_worker_niceness`)


class PoolFull(Exception):
    """The work running and queued would exceed the pool's bound."""


class CpuPool:
    def __init__(self, threads: int, max_pending_cost: int, niceness: int = WORKER_NICENESS):
        self.max_pending_cost = max_pending_cost
        self.pending_cost = 0  # of the calls running or queued
        self._executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="e2llm-cpu",
            initializer=_lower_priority,
            initargs=(niceness,),
        )

    async def run(self, cost: int, fn: Callable[..., _T], *args: object) -> _T:
        """`fn(*args)` on a pool thread; `PoolFull` if `cost` more would exceed the bound."""
        if self.pending_cost and self.pending_cost + cost > self.max_pending_cost:
            raise PoolFull(f"{self.pending_cost} queued, {cost} more asked")
        loop = asyncio.get_running_loop()
        self.pending_cost += cost
        future = self._executor.submit(functools.partial(fn, *args))
        # counted until the thread is done with it, even if the caller stops waiting (a client
        # that left): a call already running cannot be stopped, so it still takes its place
        future.add_done_callback(lambda _: self._done_in(loop, cost))
        return await asyncio.wrap_future(future)

    def _done_in(self, loop: asyncio.AbstractEventLoop, cost: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to count
            loop.call_soon_threadsafe(self._count_done, cost)

    def _count_done(self, cost: int) -> None:
        self.pending_cost -= cost

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lower_priority(niceness: int) -> None:
    """Give this thread (not the process) `niceness`; where threads have no priority of their own
    (not Linux), it stays as it is."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)

"""The event loop: a heap of timed events, each returning its follow-ups.

Handlers never touch the queue: they return the events they cause (Vidur's style), and the loop
pushes them. Ties are broken by a per-loop sequence number, so two runs on the same input pop
events in the same order (no wall-clock, no globals, no ids counted on a class). Cancelling an
event sets a flag (O(1)); the loop skips it when it is popped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

Handler = Callable[..., "Iterable[Event] | None"]


class Event:
    """Call `fn(time, *args)` at `time` (seconds) unless cancelled first."""

    __slots__ = ("args", "cancelled", "fn", "time")

    def __init__(self, time: float, fn: Handler, *args: Any) -> None:
        self.time = time
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Runs events in (time, insertion order). `now` is the time of the event being handled."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = 0
        self.now = 0.0
        self.handled = 0  # events run (cancelled ones not counted), for benchmarks

    def push(self, events: Iterable[Event] | None) -> None:
        if not events:
            return
        for ev in events:
            if ev.time < self.now:
                raise AssertionError(f"event scheduled in the past: {ev.time} < {self.now}")
            self._seq += 1
            heapq.heappush(self._heap, (ev.time, self._seq, ev))

    def run(self) -> float:
        """Handle events until none is left; returns the time of the last one."""
        heap = self._heap
        pop = heapq.heappop
        while heap:
            t, _, ev = pop(heap)
            if ev.cancelled:
                continue
            self.now = t
            self.handled += 1
            follow = ev.fn(t, *ev.args)
            if follow:
                self.push(follow)
        return self.now

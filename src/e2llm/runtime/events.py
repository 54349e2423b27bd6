"""What just happened to a deployment: a short, typed log of its notable events.

The serving layer records an event with `ServingMetrics.record_event(kind, text)` (the one call
for it: it also counts the event in `/metrics` as `e2llm_events_total{kind}`); the dashboard and
`GET /v1/status` show the most recent ones. Whoever records an event logs the same text with its
own logger. The log is bounded: a burst (every request of a lost replica
migrating) pushes old events out instead of growing without limit.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

KEEP_EVENTS = 200


class EventKind(StrEnum):
    PLAN_STARTED = "plan_started"  # serving began with a plan
    DEVICE_LOST = "device_lost"  # a stage actor (its process or node) died: its replica is out
    MIGRATION = "migration"  # a request moved to another replica after a loss
    REPLAN = "replan"  # a re-made plan serves now; the old replicas drain
    REPLAN_FAILED = "replan_failed"  # no new plan could be made or started: serving goes on as is
    ROLE_SWITCH = "role_switch"  # a replica changed role (PREFILL / DECODER / MIXED)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int  # 1, 2, 3, ... in recording order: a reader keeps only ids it has not seen
    time_s: float  # Unix time
    kind: EventKind
    text: str


RecordEvent = Callable[[EventKind, str], object]  # `ServingMetrics.record_event`


def ignore_event(kind: EventKind, text: str) -> None:
    """A `RecordEvent` for parts used without a deployment's metrics."""


class EventLog:
    """The last `keep` events, oldest first."""

    def __init__(self, keep: int = KEEP_EVENTS):
        self._events: collections.deque[Event] = collections.deque(maxlen=keep)
        self._ids = itertools.count(1)  # per log: two servers in one process never share ids

    def record(self, kind: EventKind, text: str) -> Event:
        event = Event(id=next(self._ids), time_s=time.time(), kind=kind, text=text)
        self._events.append(event)
        return event

    def recent(self) -> list[Event]:
        return list(self._events)

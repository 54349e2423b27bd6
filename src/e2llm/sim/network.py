"""Transfers over the cluster's links, shared fairly between concurrent flows.

Each directed device pair (a -> b) is one full-duplex channel of the link's bandwidth (a switched
LAN: a -> b and b -> a do not compete). Flows on a channel are served by processor sharing: with
n flows each progresses at bandwidth / n, so two equal transfers started together both take
twice as long as one alone. The link latency is added once per flow, after its last byte.

Each change of a channel's flow set costs O(flows on that channel); one completion event per
channel is kept in the loop (rescheduled, the old one cancelled).
"""

from __future__ import annotations

from collections.abc import Callable

from e2llm.sim.engine import Event
from e2llm.specs.device import Cluster

Done = Callable[[float], list[Event]]  # called with the delivery time; returns follow-ups

_EPS_BYTES = 1e-3  # a flow with less than this left is finished (float round-off)


class _Flow:
    __slots__ = ("done", "remaining")

    def __init__(self, n_bytes: float, done: Done) -> None:
        self.remaining = n_bytes
        self.done = done


class _Channel:
    __slots__ = ("bytes_per_s", "flows", "latency_s", "next_event", "updated_s")

    def __init__(self, bytes_per_s: float, latency_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.latency_s = latency_s
        self.flows: list[_Flow] = []
        self.updated_s = 0.0
        self.next_event: Event | None = None

    def advance(self, now: float) -> None:
        """Drain the bytes every flow moved since the last change."""
        if self.flows:
            moved = (now - self.updated_s) * self.bytes_per_s / len(self.flows)
            for f in self.flows:
                f.remaining -= moved
        self.updated_s = now


class Network:
    """Starts transfers and tells their owners when the last byte has arrived."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._channels: dict[tuple[str, str], _Channel] = {}
        self.bytes_moved = 0.0

    def _channel(self, a: str, b: str) -> _Channel:
        ch = self._channels.get((a, b))
        if ch is None:
            link = self._cluster.link(a, b)
            ch = _Channel(link.bandwidth_mbps * 1e6 / 8, link.latency_ms / 1e3)
            self._channels[(a, b)] = ch
        return ch

    def send(self, now: float, a: str, b: str, n_bytes: float, done: Done) -> list[Event]:
        """Start moving `n_bytes` from device a to device b; `done(t)` runs at delivery."""
        if a == b or n_bytes <= 0:
            return [Event(now, _deliver, done)]
        self.bytes_moved += n_bytes
        ch = self._channel(a, b)
        ch.advance(now)
        ch.flows.append(_Flow(n_bytes, done))
        return self._reschedule(now, ch)

    def _reschedule(self, now: float, ch: _Channel) -> list[Event]:
        if ch.next_event is not None:
            ch.next_event.cancel()
            ch.next_event = None
        if not ch.flows:
            return []
        first = min(f.remaining for f in ch.flows)
        t = now + max(first, 0.0) * len(ch.flows) / ch.bytes_per_s
        ch.next_event = Event(t, self._on_drained, ch)
        return [ch.next_event]

    def _on_drained(self, now: float, ch: _Channel) -> list[Event]:
        ch.next_event = None
        ch.advance(now)
        least = min(f.remaining for f in ch.flows)
        out: list[Event] = []
        keep: list[_Flow] = []
        for f in ch.flows:
            if f.remaining <= max(least, 0.0) + _EPS_BYTES:
                out.append(Event(now + ch.latency_s, _deliver, f.done))
            else:
                keep.append(f)
        ch.flows = keep
        out.extend(self._reschedule(now, ch))
        return out


def _deliver(now: float, done: Done) -> list[Event]:
    return done(now)

"""Prometheus metrics of the serving layer (`/metrics`), live per-replica rates, and events.

Counters and histograms are updated by the serving loop as things happen. Per-stage figures
(compute seconds, KV bytes held) live in the stage actors; the `/metrics` handler fetches them
(`set_stage_stats`) just before rendering. Each `ServingMetrics` owns its registry, so two
servers in one process never share counters. Per replica, a sliding window of the last
`TOKENS_PER_S_WINDOW_S` seconds gives the observed rates that `GET /v1/status` sets beside the
plan's predictions; `record_event` is the one call that notes a notable event for the dashboard
(`events`) and counts it (the caller logs it with its own logger, as it logs everything else).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from e2llm.plan.types import Role
from e2llm.runtime.events import Event, EventKind, EventLog

TOKENS_PER_S_WINDOW_S = 10.0


class _Finished(Protocol):
    finish_reason: str | None
    cancelled: bool

    def timings(self) -> dict[str, Any]: ...


class _StageCollector:
    """Renders the last per-stage snapshot fetched from the actors."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def collect(self) -> Iterator[Metric]:
        compute = CounterMetricFamily(
            "e2llm_stage_compute_seconds",
            "Compute time of each stage actor",
            labels=["replica", "device", "phase"],
        )
        kv = GaugeMetricFamily(
            "e2llm_stage_kv_bytes", "KV cache bytes held by each stage", labels=["replica", "device"]
        )
        for row in self.rows:
            labels = [str(row["replica"]), str(row["device"])]
            for phase, seconds in row["compute_s"].items():
                compute.add_metric([*labels, phase], seconds)
            kv.add_metric(labels, row["kv_bytes"])
        yield compute
        yield kv


class Window:
    """(tokens, busy seconds, count) added over the last `span_s` seconds."""

    def __init__(self, span_s: float = TOKENS_PER_S_WINDOW_S):
        self.span_s = span_s
        self._items: collections.deque[tuple[float, int, float]] = collections.deque()
        self.total_tokens = 0  # since start, never dropped

    def add(self, tokens: int, busy_s: float) -> None:
        self._items.append((time.monotonic(), tokens, busy_s))
        self.total_tokens += tokens

    def sums(self) -> tuple[int, float, int]:
        """Tokens, busy seconds and entries within the window."""
        cutoff = time.monotonic() - self.span_s
        while self._items and self._items[0][0] < cutoff:
            self._items.popleft()
        return sum(i[1] for i in self._items), sum(i[2] for i in self._items), len(self._items)


class ReplicaRates:
    """One replica's recent work: prompts prefilled and decode steps run."""

    def __init__(self) -> None:
        self.prefill = Window()  # per prompt: its tokens and its prefill time
        self.decode = Window()  # per step: the batch size (tokens made) and the step time


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("e2llm_requests", "Finished requests by outcome", ["outcome"], registry=r)
        self.prompt_tokens = Counter("e2llm_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("e2llm_generated_tokens", "Tokens generated", registry=r)
        self.kv_bytes = Counter("e2llm_kv_transfer_bytes", "KV bytes moved PREFILL -> DECODER", registry=r)
        self.kv_seconds = Histogram("e2llm_kv_transfer_seconds", "KV hand-off time per request", registry=r)
        self.prefill_seconds = Histogram("e2llm_prefill_seconds", "Prefill time", ["replica"], registry=r)
        self.step_seconds = Histogram(
            "e2llm_decode_step_seconds", "One batched decode step over a replica", ["replica"], registry=r
        )
        self.batch_size = Gauge(
            "e2llm_decode_batch_size", "Sequences in the decode batch", ["replica"], registry=r
        )
        self.batch_peak = Gauge(
            "e2llm_decode_batch_peak", "Largest decode batch stepped so far", ["replica"], registry=r
        )
        self._peaks: dict[str, int] = {}
        self._gone: set[str] = set()  # replicas lost or retired: their series are removed
        self.queue = Gauge("e2llm_queue_length", "Requests waiting", ["replica", "phase"], registry=r)
        self.ttft = Histogram("e2llm_ttft_seconds", "Time to first token", registry=r)
        self.waiting = Histogram("e2llm_waiting_seconds", "Time queued and not served", registry=r)
        self.tok_s = Gauge("e2llm_tokens_per_second", "Generated tokens/s over the last 10 s", registry=r)
        self.tok_s.set_function(self.tokens_per_s)
        self.event_count = Counter("e2llm_events", "Notable events by kind", ["kind"], registry=r)
        self.role_switches = Counter(
            "e2llm_role_switches", "Role changes of replicas at run time", ["replica", "role"], registry=r
        )
        self.mixed_steps = Counter(
            "e2llm_mixed_iterations",
            "MIXED iterations that carried prompt chunks beside a decode batch",
            ["replica"],
            registry=r,
        )
        self.role = Gauge(
            "e2llm_replica_role", "1 for each replica's current role", ["replica", "role"], registry=r
        )
        self.stages = _StageCollector()
        r.register(self.stages)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.events = EventLog()
        self.rates: collections.defaultdict[str, ReplicaRates] = collections.defaultdict(ReplicaRates)

    # ---- events from the serving loop ----------------------------------------------------
    def prefill_done(self, replica: str, tokens: int, seconds: float) -> None:
        self.prompt_tokens.inc(tokens)
        self._count_tokens(1)  # the first token comes out of the prefill
        if replica in self._gone:
            return
        self.prefill_seconds.labels(replica).observe(seconds)
        self.rates[replica].prefill.add(tokens, seconds)

    def decode_step(self, replica: str, batch: int, seconds: float) -> None:
        self._count_tokens(batch)
        if replica in self._gone:
            return
        self.step_seconds.labels(replica).observe(seconds)
        self.batch_size.labels(replica).set(batch)
        self.rates[replica].decode.add(batch, seconds)
        if batch > self._peaks.get(replica, 0):
            self._peaks[replica] = batch
            self.batch_peak.labels(replica).set(batch)

    def kv_moved(self, src: str, dst: str, n_bytes: int, seconds: float) -> None:
        self.kv_bytes.inc(n_bytes)
        self.kv_seconds.observe(seconds)

    def set_decode_queue(self, replica: str, waiting: int, active: int) -> None:
        if replica not in self._gone:
            self.queue.labels(replica, "decode").set(waiting)
            self.batch_size.labels(replica).set(active)

    def set_prefill_queue(self, replica: str, waiting: int) -> None:
        if replica not in self._gone:
            self.queue.labels(replica, "prefill").set(waiting)

    def replica_gone(self, replica: str) -> None:
        """A replica was lost or retired: its per-replica series leave `/metrics` (a gauge kept
        at its last value would read as a replica still at work) and later updates are ignored."""
        self._gone.add(replica)
        for metric in (self.prefill_seconds, self.step_seconds, self.batch_size, self.batch_peak):
            with contextlib.suppress(KeyError):
                metric.remove(replica)
        for phase in ("prefill", "decode"):
            with contextlib.suppress(KeyError):
                self.queue.remove(replica, phase)
        for role in Role:
            with contextlib.suppress(KeyError):
                self.role.remove(replica, role.value)

    def set_role(self, replica: str, role: str, before: str | None = None) -> None:
        """`replica` works in `role` now (`before`: the role it left, counted as a switch)."""
        if replica in self._gone:
            return
        if before is not None:
            self.role.labels(replica, before).set(0)
            self.role_switches.labels(replica, role).inc()
        self.role.labels(replica, role).set(1)

    def switch_count(self) -> int:
        """Role changes so far, all replicas."""
        return int(
            sum(s.value for m in self.role_switches.collect() for s in m.samples if s.name.endswith("_total"))
        )

    def request_finished(self, gen: _Finished) -> None:
        outcome = "cancelled" if gen.cancelled else (gen.finish_reason or "unknown")
        self.requests.labels(outcome).inc()
        t = gen.timings()
        self.waiting.observe(t["waiting_s"])
        if t["ttft_s"] is not None:
            self.ttft.observe(t["ttft_s"])

    def record_event(self, kind: EventKind, text: str) -> Event:
        """Note a notable event: kept for the dashboard (`GET /v1/status`) and counted."""
        self.event_count.labels(kind.value).inc()
        return self.events.record(kind, text)

    def requests_by_outcome(self) -> dict[str, int]:
        """Finished requests so far, by outcome (stop, length, error, cancelled, ...)."""
        counts = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["outcome"]] = int(sample.value)
        return counts

    def set_stage_stats(self, rows: list[dict[str, Any]]) -> None:
        self.stages.rows = rows

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- tokens/s ------------------------------------------------------------------------
    def _count_tokens(self, n: int) -> None:
        self.generated_tokens.inc(n)
        self._recent.append((time.monotonic(), n))

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last `TOKENS_PER_S_WINDOW_S`, whole deployment."""
        cutoff = time.monotonic() - TOKENS_PER_S_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / TOKENS_PER_S_WINDOW_S

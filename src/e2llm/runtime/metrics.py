"""Prometheus metrics of the serving layer (`/metrics`).

Counters and histograms are updated by the serving loop as things happen. Per-stage figures
(compute seconds, KV bytes held) live in the stage actors; the `/metrics` handler fetches them
(`set_stage_stats`) just before rendering. Each `ServingMetrics` owns its registry, so two
servers in one process never share counters.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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
        self.queue = Gauge("e2llm_queue_length", "Requests waiting", ["replica", "phase"], registry=r)
        self.ttft = Histogram("e2llm_ttft_seconds", "Time to first token", registry=r)
        self.waiting = Histogram("e2llm_waiting_seconds", "Time queued and not served", registry=r)
        self.tok_s = Gauge("e2llm_tokens_per_second", "Generated tokens/s over the last 10 s", registry=r)
        self.tok_s.set_function(self._tokens_per_s)
        self.stages = _StageCollector()
        r.register(self.stages)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    # ---- events from the serving loop ----------------------------------------------------
    def prefill_done(self, replica: str, tokens: int, seconds: float) -> None:
        self.prompt_tokens.inc(tokens)
        self.prefill_seconds.labels(replica).observe(seconds)
        self._count_tokens(1)  # the first token comes out of the prefill

    def decode_step(self, replica: str, batch: int, seconds: float) -> None:
        self.step_seconds.labels(replica).observe(seconds)
        self.batch_size.labels(replica).set(batch)
        if batch > self._peaks.get(replica, 0):
            self._peaks[replica] = batch
            self.batch_peak.labels(replica).set(batch)
        self._count_tokens(batch)

    def kv_moved(self, src: str, dst: str, n_bytes: int, seconds: float) -> None:
        self.kv_bytes.inc(n_bytes)
        self.kv_seconds.observe(seconds)

    def set_decode_queue(self, replica: str, waiting: int, active: int) -> None:
        self.queue.labels(replica, "decode").set(waiting)
        self.batch_size.labels(replica).set(active)

    def set_prefill_queue(self, replica: str, waiting: int) -> None:
        self.queue.labels(replica, "prefill").set(waiting)

    def request_finished(self, gen: _Finished) -> None:
        outcome = "cancelled" if gen.cancelled else (gen.finish_reason or "unknown")
        self.requests.labels(outcome).inc()
        t = gen.timings()
        self.waiting.observe(t["waiting_s"])
        if t["ttft_s"] is not None:
            self.ttft.observe(t["ttft_s"])

    def set_stage_stats(self, rows: list[dict[str, Any]]) -> None:
        self.stages.rows = rows

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- tokens/s ------------------------------------------------------------------------
    def _count_tokens(self, n: int) -> None:
        self.generated_tokens.inc(n)
        self._recent.append((time.monotonic(), n))

    def _tokens_per_s(self) -> float:
        cutoff = time.monotonic() - TOKENS_PER_S_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / TOKENS_PER_S_WINDOW_S

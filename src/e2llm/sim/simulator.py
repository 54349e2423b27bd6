"""`simulate(plan, cost, requests)`: replay requests through a plan, return what happened to each.

Wiring only: arrivals are chained (one pending arrival event at a time, so the heap stays small),
the router picks replicas, PREFILL pipelines hand finished prompts to the KV hand-off, which
splits the KV by layer between the prefill and decoder devices (the two replicas may cut the
layers differently: each intersecting range moves device to device over that pair's link) and
hands the request to its decoder when the last part has arrived.

TTFT counts the KV hand-off (DESIGN): in a disaggregated plan the first token is available when
the last KV part reaches the decoder; the decoder then generates the remaining tokens.
A request is failed, never dropped, when no replica could ever hold its KV or its context is
longer than the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from e2llm.cost.model import CostModel
from e2llm.plan.types import Plan, Role
from e2llm.sim.decode import DecodeEngine
from e2llm.sim.engine import Event, EventLoop
from e2llm.sim.metrics import RequestRecord
from e2llm.sim.network import Network
from e2llm.sim.prefill import PrefillPipeline
from e2llm.sim.router import pick_decoder, pick_prefill
from e2llm.sim.state import BusyLog, Job, RangeKv
from e2llm.specs.workload import Request


@dataclass(frozen=True)
class SimResult:
    records: tuple[RequestRecord, ...]
    busy: dict[str, list[tuple[float, float, float]]]  # device -> (start_s, end_s, share) intervals
    end_s: float  # time of the last event
    events: int  # events handled
    network_bytes: float  # bytes that crossed the network (KV hand-offs and prefill hops)


class _Run:
    def __init__(self, plan: Plan, cost: CostModel, requests: Sequence[Request]) -> None:
        self.plan = plan
        self.cost = cost
        self.requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        self.jobs: list[Job] = []
        self.busy = BusyLog()
        self.net = Network(cost.cluster)
        self.pipes = [
            PrefillPipeline(r, cost, self.net, self.busy, self._prefill_done)
            for r in plan.replicas
            if r.role is Role.PREFILL
        ]
        self.pipe_by_id = {p.replica.id: p for p in self.pipes}
        self.engines = [DecodeEngine(r, cost, self.busy) for r in plan.replicas if r.does_decode]
        self._parts: dict[tuple[int, int], list[tuple[str, str, RangeKv]]] = {}
        self.colocated = any(r.role is Role.COLOCATED for r in plan.replicas)

    def first_events(self) -> list[Event]:
        return [Event(self.requests[0].arrival_s, self._arrive, 0)] if self.requests else []

    def _arrive(self, now: float, i: int) -> list[Event]:
        job = Job(self.requests[i])
        self.jobs.append(job)
        out = (
            [Event(self.requests[i + 1].arrival_s, self._arrive, i + 1)] if i + 1 < len(self.requests) else []
        )
        limit = self.cost.model.max_context
        if job.final_context > limit:
            job.failed = f"context {job.final_context} tokens exceeds the model's {limit}"
            return out
        if self.colocated:
            engine = pick_decoder(self.plan.scheduler, self.engines, job)
            if engine is None:
                job.failed = f"no replica can hold the KV of {job.final_context} tokens"
                return out
            engine.route(job)
            return out + engine.arrive(now, job)
        if job.output_tokens > 1 and not any(e.kv.ever_fits(job.final_context) for e in self.engines):
            job.failed = f"no decoder can hold the KV of {job.final_context} tokens"
            return out
        pipe = pick_prefill(self.plan.scheduler, self.pipes, job)
        if pipe is None:
            job.failed = f"no prefill replica can hold the KV of {job.input_tokens} tokens"
            return out
        return out + pipe.submit(now, job)

    def _prefill_done(self, now: float, job: Job) -> list[Event]:
        if job.output_tokens <= 1:
            job.first_token_s = job.last_token_s = now
            return []
        engine = pick_decoder(self.plan.scheduler, self.engines, job)
        assert engine is not None, "feasibility was checked on arrival"
        engine.route(job)
        job.kv_start_s = now
        assert job.prefill_replica is not None
        parts = self._kv_parts(job.prefill_replica, engine)
        job.kv_parts_left = len(parts)

        def part_done(t: float) -> list[Event]:
            job.kv_parts_left -= 1
            if job.kv_parts_left:
                return []
            job.kv_end_s = job.first_token_s = t
            return engine.arrive(t, job)

        out: list[Event] = []
        for a, b, kv in parts:
            out += self.net.send(now, a, b, kv.bytes(job.input_tokens), part_done)
        return out

    def _kv_parts(self, prefill_id: int, engine: DecodeEngine) -> list[tuple[str, str, RangeKv]]:
        """(prefill device, decoder device, layers both hold) for every overlapping stage pair."""
        key = (prefill_id, engine.replica.id)
        parts = self._parts.get(key)
        if parts is None:
            parts = []
            for ps in self.pipe_by_id[prefill_id].replica.stages:
                for ds in engine.replica.stages:
                    lo, hi = max(ps.start, ds.start), min(ps.end, ds.end)
                    if lo < hi:
                        parts.append((ps.device, ds.device, RangeKv(self.cost.model, lo, hi)))
            self._parts[key] = parts
        return parts

    def result(self, loop: EventLoop) -> SimResult:
        for job in self.jobs:
            if job.failed is None and job.last_token_s is None:
                job.failed = "never finished (simulator bug)"
        return SimResult(
            records=tuple(j.record() for j in self.jobs),
            busy=self.busy.intervals,
            end_s=loop.now,
            events=loop.handled,
            network_bytes=self.net.bytes_moved,
        )


def simulate(plan: Plan, cost: CostModel, requests: Sequence[Request]) -> SimResult:
    """Run `requests` through `plan`; deterministic (no randomness, no wall clock).

    The plan must be valid for the cost model (see `sim.validate.check_plan`)."""
    run = _Run(plan, cost, requests)
    loop = EventLoop()
    loop.push(run.first_events())
    loop.run()
    return run.result(loop)

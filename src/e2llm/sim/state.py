"""Mutable per-request state while a simulation runs, and the timing helpers replicas share."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.evaluate import MAX_CONCURRENCY
from e2llm.plan.types import Replica, Stage
from e2llm.sim.metrics import RequestRecord
from e2llm.specs.model_spec import ModelSpec
from e2llm.specs.workload import Request


class Job:
    """One request in flight. Times are None until the step happens."""

    __slots__ = (
        "arrival_s",
        "decode_admit_s",
        "decode_replica",
        "failed",
        "first_token_s",
        "id",
        "input_tokens",
        "kv_end_s",
        "kv_parts_left",
        "kv_start_s",
        "last_token_s",
        "output_tokens",
        "prefill_end_s",
        "prefill_queued_s",
        "prefill_replica",
        "prefill_start_s",
        "second_token_at_s",
    )

    def __init__(self, req: Request) -> None:
        self.id = req.id
        self.arrival_s = req.arrival_s
        self.input_tokens = req.input_tokens
        self.output_tokens = req.output_tokens
        self.prefill_replica: int | None = None
        self.decode_replica: int | None = None
        self.prefill_start_s: float | None = None
        self.prefill_end_s: float | None = None
        self.prefill_queued_s = 0.0  # queued before pipeline stages after the first
        self.kv_start_s: float | None = None
        self.kv_end_s: float | None = None
        self.kv_parts_left = 0
        self.decode_admit_s: float | None = None
        self.first_token_s: float | None = None
        self.second_token_at_s: float | None = None
        self.last_token_s: float | None = None
        self.failed: str | None = None

    @property
    def final_context(self) -> int:
        return self.input_tokens + self.output_tokens

    def record(self) -> RequestRecord:
        return RequestRecord(
            id=self.id,
            arrival_s=self.arrival_s,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            prefill_replica=self.prefill_replica,
            decode_replica=self.decode_replica,
            prefill_start_s=self.prefill_start_s,
            prefill_end_s=self.prefill_end_s,
            prefill_queued_s=self.prefill_queued_s,
            kv_start_s=self.kv_start_s,
            kv_end_s=self.kv_end_s,
            decode_admit_s=self.decode_admit_s,
            first_token_s=self.first_token_s,
            second_token_at_s=self.second_token_at_s,
            last_token_s=self.last_token_s,
            failed=self.failed,
        )


NO_KV_LIMIT = 1 << 40  # tokens: "holds any context" (a stage whose layers keep no KV)


class RangeKv:
    """KV bytes of one sequence in layers [start, end), as `CostModel.kv_bytes` counts them, in
    O(1) per call: layers are grouped by how many tokens they keep at most (sliding-window layers
    keep `window`, full-attention layers every token), so bytes = sum of per-token bytes x
    min(context, cap) over the groups. Built from the model's own `kv_bytes_per_token` and
    `kv_tokens`, so it stays equal to the cost model's count."""

    __slots__ = ("_capped", "_full")

    def __init__(self, model: ModelSpec, start: int, end: int) -> None:
        groups: dict[int, float] = {}
        for i in range(start, end):
            cap = model.kv_tokens(i, NO_KV_LIMIT)
            groups[cap] = groups.get(cap, 0.0) + model.kv_bytes_per_token(i)
        self._full = groups.pop(NO_KV_LIMIT, 0.0)
        self._capped = tuple(groups.items())

    def bytes(self, context: int) -> float:
        b = self._full * context
        for cap, per_token in self._capped:
            b += per_token * (context if context < cap else cap)
        return b

    def max_context(self, free_bytes: float) -> int:
        """The longest context whose KV fits in `free_bytes` (-1 if not even an empty one does;
        `NO_KV_LIMIT` when these layers keep no KV). `bytes` is piecewise linear and increasing,
        so walk its pieces: below the smallest cap every group grows, past a cap that group stops."""
        if free_bytes < 0:
            return -1
        slope = self._full + sum(p for _, p in self._capped)
        if slope <= 0:
            return NO_KV_LIMIT
        start, used = 0, 0.0
        for cap, per_token in sorted(self._capped):
            end_bytes = used + slope * (cap - start)
            if end_bytes > free_bytes:
                break
            start, used, slope = cap, end_bytes, slope - per_token
        if slope <= 0:
            return NO_KV_LIMIT
        c = min(NO_KV_LIMIT, start + int((free_bytes - used) / slope))
        while c > 0 and self.bytes(c) > free_bytes:  # float round-off at the boundary
            c -= 1
        while c < NO_KV_LIMIT and self.bytes(c + 1) <= free_bytes:
            c += 1
        return c


class KvSizer:
    """KV bytes of one sequence on each stage of a replica.

    `capacity` is what each stage's device has left for KV once its weights and the runtime
    overhead are in (may be negative: such a replica can hold no sequence)."""

    def __init__(self, cost: CostModel, replica: Replica) -> None:
        self._ranges = tuple(RangeKv(cost.model, s.start, s.end) for s in replica.stages)
        self.capacity: tuple[float, ...] = tuple(
            cost.cluster.device(s.device).memory_bytes
            - cost.weight_bytes(s.start, s.end, embedding=s.embedding, lm_head=s.lm_head)
            - RUNTIME_OVERHEAD_BYTES
            for s in replica.stages
        )
        self.capacity_tokens = self.max_context(self.capacity)  # longest context the empty replica holds

    def bytes(self, context: int) -> tuple[float, ...]:
        return tuple(r.bytes(context) for r in self._ranges)

    def ever_fits(self, context: int) -> bool:
        """Whether one sequence of `context` tokens fits on the empty replica."""
        return context <= self.capacity_tokens

    def max_context(self, free: Sequence[float]) -> int:
        """The longest context whose KV fits in `free` bytes on every stage (-1: none)."""
        return min(r.max_context(f) for r, f in zip(self._ranges, free, strict=True))


def prefill_stage_s(cost: CostModel, s: Stage, tokens: int) -> float:
    return cost.stage_prefill_s(s.device, s.n_layers, tokens, embedding=s.embedding, lm_head=s.lm_head)


def prefill_estimate(cost: CostModel, stages: Sequence[Stage], tokens: int) -> tuple[float, float]:
    """(pipelined service time = slowest stage, latency = all stages + hops) for one prompt."""
    times = [prefill_stage_s(cost, s, tokens) for s in stages]
    hops = sum(cost.hop_s(a.device, b.device, tokens) for a, b in itertools.pairwise(stages))
    return max(times), sum(times) + hops


KV_PROBE_TOKENS = 1024  # prompt length at which a replica's KV hand-off seconds per token are taken


def kv_s_per_token(cost: CostModel, src: Replica, decoders: Iterable[Replica]) -> float:
    """KV hand-off seconds per prompt token from `src` to the decoder it reaches fastest (links
    idle): per decoder, the slowest of the stage-to-stage pieces (layers both hold)."""
    best = None
    for d in decoders:
        if d.id == src.id:
            continue
        worst = 0.0
        for ps in src.stages:
            for ds in d.stages:
                lo, hi = max(ps.start, ds.start), min(ps.end, ds.end)
                if lo < hi:
                    n = RangeKv(cost.model, lo, hi).bytes(KV_PROBE_TOKENS)
                    worst = max(worst, cost.transfer_s(ps.device, ds.device, n))
        best = worst if best is None else min(best, worst)
    return (best or 0.0) / KV_PROBE_TOKENS


def decode_step(
    cost: CostModel, stages: tuple[Stage, ...], batch: int, context: int, barrier: bool = False
) -> tuple[float, list[float]]:
    """Time for every sequence of a decode batch to gain one token, and each stage's busy share.

    The batch of `batch` sequences is split into M = min(batch, stages) micro-batches that cycle
    through the pipeline (one micro-batch per stage in flight). In steady state a micro-batch
    completes one lap per cycle = max(lap latency, M x slowest stage): the lap is the sum of stage
    times and hops (including the sampled token ids going back to the first stage); a stage serves
    all M micro-batches each cycle. Deterministic service, so this cyclic flow shop has exactly
    that period. With `barrier` (`execution.Execution.step_barrier`) the micro-batches of a step
    all finish before the next step starts: a flow shop of M equal jobs each step, whose makespan
    is one lap plus (M - 1) x slowest stage.
    """
    k = len(stages)
    m = min(batch, k)
    b = math.ceil(batch / m)
    times = [
        cost.stage_decode_s(s.device, s.n_layers, b, context, embedding=s.embedding, lm_head=s.lm_head)
        for s in stages
    ]
    lap = sum(times)
    for i in range(k - 1):
        lap += cost.hop_s(stages[i].device, stages[i + 1].device, b)
    if k > 1:
        lap += cost.transfer_s(stages[-1].device, stages[0].device, 4.0 * b)  # token ids back
    cycle = lap + (m - 1) * max(times) if barrier else max(lap, m * max(times))
    return cycle, [min(1.0, m * t / cycle) if cycle > 0 else 0.0 for t in times]


def decode_batches(
    cost: CostModel,
    replica: Replica,
    kv_context: int,
    context: int,
    min_decode_tok_s: float,
    barrier: bool = False,
) -> list[tuple[int, float]]:
    """(batch, step seconds at `context`) of each decode batch 1, 2, ... up to the planner's
    largest whose KV at `kv_context` tokens each fits the replica and whose per-request speed keeps
    `min_decode_tok_s` (empty: not even one sequence); `barrier` as in `decode_step`."""
    kv = KvSizer(cost, replica)
    per_seq = kv.bytes(max(kv_context, 1))
    out = []
    for c in range(1, MAX_CONCURRENCY + 1):
        if any(c * n > cap for n, cap in zip(per_seq, kv.capacity, strict=True)):
            break
        step = decode_step(cost, replica.stages, c, context, barrier)[0]
        if min_decode_tok_s > 0 and 1.0 / step < min_decode_tok_s:
            break
        out.append((c, step))
    return out


class BusyLog:
    """Per-device busy intervals (start_s, end_s, share of the device in use) for utilisation plots."""

    def __init__(self) -> None:
        self.intervals: dict[str, list[tuple[float, float, float]]] = {}

    def add(self, device: str, start_s: float, end_s: float, share: float = 1.0) -> None:
        if end_s > start_s and share > 0:
            self.intervals.setdefault(device, []).append((start_s, end_s, share))

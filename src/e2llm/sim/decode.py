"""Continuous batching on one decode-capable replica (DECODER, or COLOCATED doing both phases).

Sequences join and leave the batch only between decode steps, up to the replica's planned
concurrency and the KV memory left on each of its devices. A sequence reserves the KV of its
final context (input + output tokens) on admission, so admitted work never has to be preempted
(what a scheduler that honours `max_tokens` does).

Speed: no event per token. While the batch does not change, all its sequences gain one token per
step, so the engine schedules one event at the step where the first of them finishes, with every
step of that segment costed at the batch size and at the mean context of the segment's middle
step (exact when decode time is linear in context, as in the roofline). Something arriving in the
middle of a segment interrupts it at the next step boundary (only if it could be admitted now).

COLOCATED replicas prioritise prefill, as vLLM and the llama.cpp server do by default: at a step
boundary, every waiting prompt that fits (concurrency, KV) is admitted and the decode batch
pauses while those prompts run through the pipeline back to back (pipelined among themselves);
each prompt's first token comes out of the last stage, and all of them join the decode batch
when the last one is done. No KV crosses the network in that case.
"""

from __future__ import annotations

from collections import deque

from e2llm.cost.model import CostModel
from e2llm.plan.types import Replica, Role
from e2llm.sim.engine import Event
from e2llm.sim.state import BusyLog, Job, KvSizer, decode_step, prefill_stage_s

_CTX_BUCKET = 64  # tokens: contexts are rounded to this for the router's capacity estimate


class _Seq:
    __slots__ = ("context", "job", "kv", "remaining")

    def __init__(self, job: Job, remaining: int, context: int, kv: tuple[float, ...]) -> None:
        self.job = job
        self.remaining = remaining  # tokens still to generate
        self.context = context
        self.kv = kv  # bytes reserved on each stage


class DecodeEngine:
    def __init__(self, replica: Replica, cost: CostModel, busy: BusyLog) -> None:
        self.replica = replica
        self.colocated = replica.role is Role.COLOCATED
        self.kv = KvSizer(cost, replica)
        self._free = list(self.kv.capacity)
        self._cost = cost
        self._busy = busy
        self.active: list[_Seq] = []
        self.waiting: deque[Job] = deque()  # DECODER: KV arrived; COLOCATED: prompt not yet prefilled
        self.assigned = 0  # jobs routed here and not finished (in transfer, waiting or active)
        self.reserved_kv = 0.0  # KV bytes of admitted + routed-but-not-admitted jobs, all stages
        # the running segment: start time, steps planned, seconds per step, its end event
        self._seg_t0 = 0.0
        self._seg_steps = 0
        self._seg_dt = 0.0
        self._seg_shares: list[float] = []  # busy share of each stage while the segment runs
        self._seg_event: Event | None = None
        self._interrupted = False
        self._prefilling = False
        self._step_cache: dict[tuple[int, int], tuple[float, list[float]]] = {}

    # --- entry points -----------------------------------------------------------------------
    def route(self, job: Job) -> None:
        """Account for a job headed here (before its KV or prompt arrives)."""
        job.decode_replica = self.replica.id
        self.assigned += 1
        self.reserved_kv += sum(self.kv.bytes(job.final_context))

    def capacity_tok_s(self, context: int) -> float:
        """Tokens per second the full batch (planned concurrency) generates at about `context`."""
        c = self.replica.concurrency
        return c / self._step(c, _CTX_BUCKET * max(1, round(context / _CTX_BUCKET)))[0]

    def _step(self, batch: int, context: int) -> tuple[float, list[float]]:
        got = self._step_cache.get((batch, context))
        if got is None:
            got = decode_step(self._cost, self.replica.stages, batch, context)
            self._step_cache[(batch, context)] = got
        return got

    def arrive(self, now: float, job: Job) -> list[Event]:
        """The job's KV (DECODER) or prompt (COLOCATED) is here; admit it at the next boundary."""
        self.waiting.append(job)
        if self._prefilling or len(self.waiting) > 1 or not self._fits(job):
            return []  # a boundary that is already due will look at the queue
        if self._seg_event is None:
            return self._boundary(now, 0)
        if self._interrupted:
            return []
        k = int((now - self._seg_t0) / self._seg_dt) + 1 if self._seg_dt > 0 else self._seg_steps
        if k >= self._seg_steps:
            return []  # the segment ends at that boundary anyway
        self._seg_event.cancel()
        self._interrupted = True
        self._seg_event = Event(max(now, self._seg_t0 + k * self._seg_dt), self._boundary, k)
        return [self._seg_event]

    # --- internals --------------------------------------------------------------------------
    def _fits(self, job: Job, joining: int = 0) -> bool:
        """Whether `job` can join now, `joining` others being admitted alongside it."""
        if len(self.active) + joining >= self.replica.concurrency:
            return False
        need = self.kv.bytes(job.final_context)
        return all(n <= f for n, f in zip(need, self._free, strict=True))

    def _boundary(self, now: float, steps: int) -> list[Event]:
        """Apply `steps` decode steps to the batch, retire finished sequences, admit, go on."""
        if self._seg_event is not None:  # a segment ran until now (to its end or interrupted)
            for stage, share in zip(self.replica.stages, self._seg_shares, strict=True):
                self._busy.add(stage.device, self._seg_t0, now, share)
        self._seg_event = None
        self._interrupted = False
        if steps:
            keep = []
            for s in self.active:
                s.remaining -= steps
                s.context += steps
                if s.remaining <= 0:
                    self._finish(now, s)
                else:
                    keep.append(s)
            self.active = keep
        admitted: list[Job] = []  # COLOCATED: prompts to prefill before they join the batch
        while self.waiting and self._fits(self.waiting[0], len(admitted)):
            job = self.waiting.popleft()
            need = self.kv.bytes(job.final_context)
            for i, n in enumerate(need):
                self._free[i] -= n
            if self.colocated:
                admitted.append(job)
            else:
                job.decode_admit_s = now
                self.active.append(_Seq(job, job.output_tokens - 1, job.input_tokens + 1, need))
        if self.colocated and admitted:
            return self._prefill_phase(now, admitted)
        return self._start_segment(now)

    def _start_segment(self, now: float) -> list[Event]:
        if not self.active:
            return []
        n = min(s.remaining for s in self.active)
        batch = len(self.active)
        mean_ctx = sum(s.context for s in self.active) / batch + (n - 1) / 2
        dt, shares = self._step(batch, round(mean_ctx))
        self._seg_t0, self._seg_steps, self._seg_dt, self._seg_shares = now, n, dt, shares
        self._seg_event = Event(now + n * dt, self._boundary, n)
        return [self._seg_event]

    def _finish(self, now: float, s: _Seq, last_token_s: float | None = None) -> None:
        for i, n in enumerate(s.kv):
            self._free[i] += n
        self.assigned -= 1
        self.reserved_kv -= sum(s.kv)
        s.job.last_token_s = now if last_token_s is None else last_token_s

    def _prefill_phase(self, now: float, jobs: list[Job]) -> list[Event]:
        """Run admitted prompts through the stages back to back (flow shop), decode paused."""
        stages = self.replica.stages
        free_at = [now] * len(stages)  # when each stage can take the next prompt
        for job in jobs:
            t = now
            for k, stage in enumerate(stages):
                if k:
                    t += self._cost.hop_s(stages[k - 1].device, stage.device, job.input_tokens)
                start = max(t, free_at[k])
                if k == 0:
                    job.prefill_start_s = start
                t = start + prefill_stage_s(self._cost, stage, job.input_tokens)
                free_at[k] = t
                self._busy.add(stage.device, start, t)
            job.prefill_end_s = job.first_token_s = t
        self._prefilling = True
        return [Event(max(free_at), self._prefill_done, jobs)]

    def _prefill_done(self, now: float, jobs: list[Job]) -> list[Event]:
        self._prefilling = False
        for job in jobs:
            seq = _Seq(job, job.output_tokens - 1, job.input_tokens + 1, self.kv.bytes(job.final_context))
            if seq.remaining <= 0:  # the prefill's token was the only one
                self._finish(now, seq, last_token_s=job.prefill_end_s)
            else:
                job.decode_admit_s = now
                self.active.append(seq)
        return self._boundary(now, 0)

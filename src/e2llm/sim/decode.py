"""Continuous batching on one replica that decodes: a DECODER, a COLOCATED or MIXED replica, or a
PREFILL replica after a role switch or while Splitwise's mixed pool borrows it.

Sequences join and leave the batch only between decode steps, up to the engine's concurrency and
the KV memory left on each of its devices (`policy.routing.admits`, in arrival order). A sequence
reserves the KV of its final context (input + output tokens) on admission, so admitted work never
has to be preempted (what a scheduler that honours `max_tokens` does).

Speed: no event per token. While the batch does not change, all its sequences gain one token per
step, so the engine schedules one event at the step where the first of them finishes, with every
step of that segment costed at the batch size and at the mean context of the segment's middle
step (exact when decode time is linear in context, as in the roofline). Something arriving in the
middle of a segment interrupts it at the next step boundary (only if it could be admitted now).

Prompts reach an engine in two modes:
- `PROMPTS_FIRST` (COLOCATED replicas; Splitwise's mixed batching): at a step boundary, every
  waiting prompt that fits (concurrency, KV) is admitted and the decode batch pauses while those
  prompts run through the pipeline back to back (pipelined among themselves), as vLLM and the
  llama.cpp server do by default; each prompt's first token comes out of the last stage when it is
  done, and all of them join the decode batch when the last one is done (or, if `on_prefilled`
  sends them elsewhere, their KV leaves for another decoder).
- `CHUNKED` (MIXED replicas): see sim/mixed.py.

One file of ~380 lines on purpose: admission, the segment clock and the two prompt modes share
one state (the batch, its segment, each device's KV); split, each part would reach into the
other's fields.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum

from e2llm.cost.model import CostModel
from e2llm.plan.types import Replica
from e2llm.policy.routing import admits
from e2llm.sim.engine import Event
from e2llm.sim.execution import IDEAL, Execution
from e2llm.sim.mixed import Prefilling, mixed_step, plan_chunks
from e2llm.sim.state import BusyLog, Job, KvSizer, decode_step, prefill_stage_s

_CTX_BUCKET = 64  # tokens: contexts are rounded to this for the router's capacity estimate

# (time, job prefilled here) -> whether it decodes here, and the events its hand-off causes
OnPrefilled = Callable[[float, Job], tuple[bool, list[Event]]]
OnIdle = Callable[[float], list[Event]]


class Mode(Enum):
    DECODE = "decode"  # sequences arrive prefilled (KV handed off)
    PROMPTS_FIRST = "prompts first"  # whole prompts, decode paused meanwhile
    CHUNKED = "chunked"  # prompt chunks ride along with decode steps (MIXED)


class _Seq:
    __slots__ = ("context", "job", "kv", "remaining")

    def __init__(self, job: Job, remaining: int, context: int, kv: tuple[float, ...]) -> None:
        self.job = job
        self.remaining = remaining  # tokens still to generate
        self.context = context
        self.kv = kv  # bytes reserved on each stage


class DecodeEngine:
    def __init__(
        self,
        replica: Replica,
        cost: CostModel,
        busy: BusyLog,
        *,
        concurrency: int,
        mode: Mode,
        chunk_tokens: int,
        on_prefilled: OnPrefilled,
        on_idle: OnIdle,
        execution: Execution = IDEAL,
    ) -> None:
        self.replica = replica
        self.concurrency = concurrency
        self.execution = execution
        self._importing = 0  # hand-offs whose KV is on its way here and pauses decoding
        self._carry = 0.0  # what is left of a decode step a prompt interleaved into (prompts_interleave)
        self.mode = mode
        self.chunk_tokens = chunk_tokens
        self.kv = KvSizer(cost, replica)
        self._free = list(self.kv.capacity)  # per stage: bytes not reserved by admitted sequences
        self._pending = [0.0] * len(replica.stages)  # per stage: bytes of routed, not yet admitted
        self._cost = cost
        self._busy = busy
        self._on_prefilled = on_prefilled
        self._on_idle = on_idle
        self.active: list[_Seq] = []
        self.waiting: deque[Job] = deque()  # here (KV arrived, or a prompt), not admitted
        self.assigned = 0  # jobs routed here and not finished (in transfer, waiting or active)
        self.queued_prompt_tokens = 0  # prompt tokens routed here and not yet prefilled
        self.prompts_waiting = 0  # prompts routed here whose prefill has not started
        self.hold = False  # the replica's PREFILL pipeline still runs: start nothing
        self._chunks: deque[Prefilling] = deque()  # CHUNKED: prompts being prefilled, in order
        # the running segment: start time, steps planned, seconds per step, its end event
        self._seg_t0 = 0.0
        self._seg_steps = 0
        self._seg_dt = 0.0
        self._seg_shares: list[float] = []  # busy share of each stage while the segment runs
        self._seg_event: Event | None = None
        self._interrupted = False
        self._phase = False  # a prompt phase or a chunked step runs: arrivals wait for its end
        self._step_cache: dict[tuple[int, int], tuple[float, list[float]]] = {}
        self._prefill_cache: dict[tuple[int, int], float] = {}

    # --- what the policy sees ------------------------------------------------------------------
    @property
    def kv_free_tokens(self) -> int:
        """Longest context that fits beside everything routed here (admitted or not)."""
        return self.kv.max_context([f - p for f, p in zip(self._free, self._pending, strict=True)])

    @property
    def kv_used_share(self) -> float:
        """KV bytes reserved (admitted or routed here) over the replica's KV memory, all stages."""
        capacity = sum(self.kv.capacity)
        free = sum(self._free) - sum(self._pending)
        return 1.0 - free / capacity if capacity > 0 else 1.0

    def capacity_tok_s(self, context: int) -> float:
        """Tokens per second the full batch (its concurrency) generates at about `context`."""
        c = self.concurrency
        return c / self._step(c, _CTX_BUCKET * max(1, round(context / _CTX_BUCKET)))[0]

    @property
    def idle(self) -> bool:
        return self.assigned == 0

    # --- entry points -----------------------------------------------------------------------
    def route(self, job: Job, prompt: bool) -> None:
        """Account for a job headed here: a sequence whose KV will arrive, or a `prompt` to prefill
        here too."""
        job.decode_replica = self.replica.id
        self.assigned += 1
        for i, n in enumerate(self.kv.bytes(job.final_context)):
            self._pending[i] += n
        if prompt:
            job.prefill_replica = self.replica.id
            self.queued_prompt_tokens += job.input_tokens
            self.prompts_waiting += 1

    def arrive(self, now: float, job: Job) -> list[Event]:
        """The job's KV (handed off) or its prompt is here; admit it at the next boundary."""
        self.waiting.append(job)
        if self.hold or self._phase or len(self.waiting) > 1 or not self._fits(job):
            return []  # a boundary that is already due will look at the queue
        if self._seg_event is None:
            return self._boundary(now, 0)
        prompt = job.prefill_start_s is None and self.mode is Mode.PROMPTS_FIRST
        return self._interrupt(now, at_once=prompt and self.execution.prompts_interleave)

    def next_boundary(self, now: float) -> float:
        """When the decode step under way ends (`now` if none runs). While decoding is paused for
        an import, `now`: the runtime's loop is then blocked in a step of its own, which this
        approximation does not model."""
        if self._seg_event is None or self._seg_dt <= 0:
            return now
        k = int((now - self._seg_t0) / self._seg_dt) + 1
        return max(now, self._seg_t0 + min(k, self._seg_steps) * self._seg_dt)

    def kv_incoming(self, now: float) -> list[Event]:
        """A hand-off towards this engine starts (see `execution.Execution`): with
        `kv_import_pauses_decode`, decoding stops at the next step boundary until it is in."""
        if not self.execution.kv_import_pauses_decode:
            return []
        self._importing += 1
        return self._interrupt(now) if self._seg_event is not None else []

    def kv_arrived(self, now: float, job: Job) -> list[Event]:
        """The KV of `job`'s hand-off is here (every part): decoding may go on; admit the job."""
        if self.execution.kv_import_pauses_decode:
            self._importing -= 1
        out = self.arrive(now, job)
        if not self._importing and self._seg_event is None and not (self.hold or self._phase or out):
            out += self._boundary(now, 0)
        return out

    def _interrupt(self, now: float, at_once: bool = False) -> list[Event]:
        """End the running segment at its next step boundary (once); `at_once`: now, the rest of
        the step under way carried over to after the prompt phase that interrupts it."""
        assert self._seg_event is not None
        if self._interrupted:
            return []
        k = int((now - self._seg_t0) / self._seg_dt) + 1 if self._seg_dt > 0 else self._seg_steps
        if k >= self._seg_steps:
            return []  # the segment ends at that boundary anyway
        self._seg_event.cancel()
        self._interrupted = True
        end = self._seg_t0 + k * self._seg_dt
        if at_once and end > now:
            self._carry = end - now
            self._seg_event = Event(now, self._boundary, k - 1)
        else:
            self._seg_event = Event(max(now, end), self._boundary, k)
        return [self._seg_event]

    def release(self, now: float) -> list[Event]:
        """The replica's pipeline is done: start on whatever waits."""
        self.hold = False
        return self._boundary(now, 0) if self.waiting and self._seg_event is None and not self._phase else []

    # --- internals --------------------------------------------------------------------------
    def _step(self, batch: int, context: int) -> tuple[float, list[float]]:
        got = self._step_cache.get((batch, context))
        if got is None:
            got = decode_step(self._cost, self.replica.stages, batch, context, self.execution.step_barrier)
            self._step_cache[(batch, context)] = got
        return got

    def _occupied(self) -> int:
        return len(self.active) + len(self._chunks)

    def _fits(self, job: Job, joining: int = 0) -> bool:
        """Whether `job` can join now, `joining` others being admitted alongside it."""
        return admits(
            self._occupied() + joining, self.concurrency, self.kv.max_context(self._free), job.final_context
        )

    def _boundary(self, now: float, steps: int) -> list[Event]:
        """Apply `steps` decode steps to the batch, retire finished sequences, admit, go on."""
        if self._seg_event is not None:  # a segment ran until now (to its end or interrupted)
            for stage, share in zip(self.replica.stages, self._seg_shares, strict=True):
                self._busy.add(stage.device, self._seg_t0, now, share)
            if steps:
                self._advance(now, steps, self._seg_t0 + self._seg_dt)
        self._seg_event = None
        self._interrupted = False
        if self.hold:
            return []
        prompts: list[Job] = []  # admitted prompts (PROMPTS_FIRST: the phase to run now)
        while self.waiting and self._fits(
            self.waiting[0], len(prompts) if self.mode is Mode.PROMPTS_FIRST else 0
        ):
            job = self.waiting.popleft()
            need = self.kv.bytes(job.final_context)
            for i, n in enumerate(need):
                self._free[i] -= n
                self._pending[i] -= n
            if job.prefill_start_s is not None:  # prefilled elsewhere, KV here: decode now
                job.decode_admit_s = now
                self.active.append(_Seq(job, job.output_tokens - 1, job.input_tokens + 1, need))
            elif self.mode is Mode.CHUNKED:
                self.prompts_waiting -= 1
                job.prefill_start_s = now
                self._chunks.append(Prefilling(job))
            else:
                self.prompts_waiting -= 1
                prompts.append(job)
        if prompts:
            return self._prefill_phase(now, prompts)
        if self._chunks:
            return self._chunked_step(now)
        return self._start_segment(now)

    def _advance(self, now: float, steps: int, first_step_end: float) -> None:
        """Every active sequence gained `steps` tokens by `now`; retire the finished ones."""
        keep = []
        for s in self.active:
            if s.job.second_token_at_s is None:
                s.job.second_token_at_s = first_step_end
            s.remaining -= steps
            s.context += steps
            if s.remaining <= 0:
                self._finish(now, s.job, s.kv)
            else:
                keep.append(s)
        self.active = keep

    def _start_segment(self, now: float) -> list[Event]:
        if not self.active:
            return self._on_idle(now) if self.idle else []
        if self._importing:
            return []  # paused until the KV on its way is in (`kv_arrived`)
        if self._carry > 0:  # a step was cut for a prompt that did not start after all: finish it
            carry, self._carry = self._carry, 0.0
            return [Event(now + carry, self._carried_step_then_go_on)]
        n = min(s.remaining for s in self.active)
        batch = len(self.active)
        mean_ctx = sum(s.context for s in self.active) / batch + (n - 1) / 2
        dt, shares = self._step(batch, round(mean_ctx))
        self._seg_t0, self._seg_steps, self._seg_dt, self._seg_shares = now, n, dt, shares
        self._seg_event = Event(now + n * dt, self._boundary, n)
        return [self._seg_event]

    def _finish(self, now: float, job: Job, kv: tuple[float, ...], last_token_s: float | None = None) -> None:
        for i, n in enumerate(kv):
            self._free[i] += n
        self.assigned -= 1
        job.last_token_s = now if last_token_s is None else last_token_s

    def _prefilled(self, now: float, job: Job) -> list[Event]:
        """`job`'s prompt is done here (first token at `job.prefill_end_s`): decode it here, finish
        it (one output token), or let it go to the decoder `on_prefilled` chose."""
        self.queued_prompt_tokens -= job.input_tokens
        need = self.kv.bytes(job.final_context)
        if job.output_tokens <= 1:
            self._finish(now, job, need, last_token_s=job.prefill_end_s)
            return []
        keep, out = self._on_prefilled(now, job)
        if keep:
            job.decode_admit_s = now
            self.active.append(_Seq(job, job.output_tokens - 1, job.input_tokens + 1, need))
        else:  # its KV is leaving: free the reservation (the request is the new decoder's now)
            for i, n in enumerate(need):
                self._free[i] += n
            self.assigned -= 1
        return out

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
        self._phase = True
        return [Event(max(free_at), self._prefill_done, jobs)]

    def _prefill_done(self, now: float, jobs: list[Job]) -> list[Event]:
        if self._carry > 0:  # the interleaved decode step ends now, before the prompts join it
            carry, self._carry = self._carry, 0.0
            for stage, share in zip(self.replica.stages, self._seg_shares, strict=True):
                self._busy.add(stage.device, now, now + carry, share)
            return [Event(now + carry, self._carried_step_done, jobs)]
        self._phase = False
        out: list[Event] = []
        for job in jobs:
            out += self._prefilled(now, job)
        return out + self._boundary(now, 0)

    def _carried_step_then_go_on(self, now: float) -> list[Event]:
        self._advance(now, 1, now)
        return self._boundary(now, 0)

    def _carried_step_done(self, now: float, jobs: list[Job]) -> list[Event]:
        self._advance(now, 1, now)
        return self._prefill_done(now, jobs)

    # --- CHUNKED (MIXED) ----------------------------------------------------------------------
    def _chunk_stage_s(self, k: int, tokens: int) -> float:
        """Stage k's prefill time for the first `tokens` tokens of a prompt (0 for none)."""
        if tokens <= 0:
            return 0.0
        got = self._prefill_cache.get((k, tokens))
        if got is None:
            got = prefill_stage_s(self._cost, self.replica.stages[k], tokens)
            self._prefill_cache[(k, tokens)] = got
        return got

    def _chunked_step(self, now: float) -> list[Event]:
        """One Sarathi iteration: every active sequence gains a token while the prompts at the
        head of the chunk queue advance by the budget left over."""
        pieces = plan_chunks(self._chunks, len(self.active), self.chunk_tokens)
        stages = self.replica.stages
        chunk_s = [
            sum(self._chunk_stage_s(k, p.done + n) - self._chunk_stage_s(k, p.done) for p, n in pieces)
            for k in range(len(stages))
        ]
        batch = len(self.active)
        context = round(sum(s.context for s in self.active) / batch) if batch else 0
        dt, shares = mixed_step(self._cost, stages, batch, context, chunk_s, sum(n for _, n in pieces))
        for stage, share in zip(stages, shares, strict=True):
            self._busy.add(stage.device, now, now + dt, share)
        self._phase = True
        return [Event(now + dt, self._chunked_done, pieces)]

    def _chunked_done(self, now: float, pieces: list[tuple[Prefilling, int]]) -> list[Event]:
        self._phase = False
        if self.active:
            self._advance(now, 1, now)
        out: list[Event] = []
        for p, n in pieces:
            p.done += n
            if p.done >= p.job.input_tokens:
                self._chunks.remove(p)
                p.job.prefill_end_s = p.job.first_token_s = now
                out += self._prefilled(now, p.job)
        return out + self._boundary(now, 0)

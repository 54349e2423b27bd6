"""`simulate(plan, cost, requests)`: replay requests through a plan, return what happened to each.

Wiring only: arrivals are chained (one pending arrival event at a time, so the heap stays small),
the router (the serving policy, policy/) picks replicas, a finished prompt's KV is handed off,
split by layer between the prefill and decoder devices (the two replicas may cut the layers
differently: each intersecting range moves device to device over that pair's link), and the
request joins its decoder when the last part has arrived. With `PolicySettings.adapt`, e2llm's
role controller looks at the replicas' loads at most once per `CONTROL_PERIOD_S` of simulated time
(at an arrival) and runs its switches: stop routing -> drain -> switch -> publish. Splitwise
plans borrow and return replicas by their mixed-pool rules.

TTFT (DESIGN): the first token comes out of the replica that ran the prompt, and is delivered
then, whatever the plan type; in a disaggregated plan the KV hand-off and the wait for a decoder
slot show in the second token (`second_token_s`) and in `kv_transfer_s`.
A request is failed, never dropped, when no replica could ever hold its KV or its context is
longer than the model's.

~320 lines: one event loop (`_Run`) and its entry point.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from e2llm.cost.model import CostModel
from e2llm.plan.types import Plan, Role, Scheduler
from e2llm.policy.controller import Demand, decide_switch, drained
from e2llm.policy.mixed_pool import returns
from e2llm.policy.settings import PolicySettings
from e2llm.sim.engine import Event, EventLoop
from e2llm.sim.execution import IDEAL, Execution
from e2llm.sim.metrics import RequestRecord
from e2llm.sim.network import Network
from e2llm.sim.replica import ReplicaSim, decode_slots
from e2llm.sim.router import Router
from e2llm.sim.state import BusyLog, Job, RangeKv
from e2llm.specs.workload import Request

CONTROL_PERIOD_S = 1.0  # how often (simulated seconds, at most) the role controller looks
DEMAND_WINDOW = 200  # recent arrivals whose mean shape the role controller plans for


@dataclass(frozen=True)
class SimResult:
    records: tuple[RequestRecord, ...]
    busy: dict[str, list[tuple[float, float, float]]]  # device -> (start_s, end_s, share) intervals
    end_s: float  # time of the last event
    events: int  # events handled
    network_bytes: float  # bytes that crossed the network (KV hand-offs and prefill hops)
    role_switches: int = 0  # role changes during the run (switches, borrows and returns)
    roles: tuple[tuple[float, int, str], ...] = ()  # (time, replica, new role) of every change


Delivered = Callable[[float], list[Event]]


@dataclass(frozen=True)
class ServingContext:
    """What the serving side knows besides the plan: the policy settings, and the workload's
    speed floor and budgeted KV context (to size the batch of a replica that starts decoding)."""

    settings: PolicySettings = field(default_factory=PolicySettings)
    min_decode_tok_s: float = 0.0
    kv_context_tokens: int = 0  # 0: the 90th percentile of the requests' final contexts
    execution: Execution = IDEAL  # how the engine runs the plan (`execution.RAY_RUNTIME`: e2llm serve)


class _Run:
    def __init__(self, plan: Plan, cost: CostModel, requests: Sequence[Request], ctx: ServingContext) -> None:
        self.plan = plan
        self.cost = cost
        self.settings = ctx.settings
        self.execution = ctx.execution
        self.requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        self.jobs: list[Job] = []
        self.busy = BusyLog()
        self.net = Network(cost.cluster)
        splitwise = plan.scheduler is Scheduler.SPLITWISE
        floor = 0.0 if splitwise else ctx.min_decode_tok_s  # Splitwise batches by memory alone
        context = ctx.kv_context_tokens or _p90_context(requests)
        self.replicas = [
            ReplicaSim(
                r,
                cost,
                self.net,
                self.busy,
                slots=decode_slots(cost, r, context, floor, ctx.execution),
                chunk_tokens=ctx.settings.chunk_tokens,
                on_prefill_done=self._prefill_done,
                on_prefilled=self._prefilled,
                on_idle=self._idle,
                execution=ctx.execution,
            )
            for r in plan.replicas
        ]
        decoders = [r for r in self.replicas if r.engine is not None]
        for r in self.replicas:
            r.set_kv_probe(decoders, cost)
        self.by_id = {r.id: r for r in self.replicas}
        self.router = Router(plan.scheduler, self.replicas)
        self.colocated = all(r.role is Role.COLOCATED for r in plan.replicas)
        self.adapt = ctx.settings.adapt and not splitwise and not self.colocated
        self._parts: dict[tuple[int, int], list[tuple[str, str, RangeKv]]] = {}
        self._next_control_s = 0.0
        self._switching: ReplicaSim | None = None
        self._last_switch_s: dict[int, float] = {}
        self._recent: deque[tuple[int, int]] = deque(maxlen=DEMAND_WINDOW)  # (input, output) tokens
        self.roles: list[tuple[float, int, str]] = []

    def first_events(self) -> list[Event]:
        return [Event(self.requests[0].arrival_s, self._arrive, 0)] if self.requests else []

    # --- requests -------------------------------------------------------------------------------
    def _arrive(self, now: float, i: int) -> list[Event]:
        job = Job(self.requests[i])
        self.jobs.append(job)
        out = (
            [Event(self.requests[i + 1].arrival_s, self._arrive, i + 1)] if i + 1 < len(self.requests) else []
        )
        self._recent.append((job.input_tokens, job.output_tokens))
        if self.adapt and now >= self._next_control_s:
            self._next_control_s = now + CONTROL_PERIOD_S
            out += self._control(now)
        limit = self.cost.model.max_context
        if job.final_context > limit:
            job.failed = f"context {job.final_context} tokens exceeds the model's {limit}"
            return out
        if self.colocated:
            target = self.router.decoder(now, job, None)
            if target is None:
                job.failed = f"no replica can hold the KV of {job.final_context} tokens"
                return out
            return out + target[0].submit_prompt(now, job)
        if job.output_tokens > 1 and not any(self._may_decode(r, job.final_context) for r in self.replicas):
            job.failed = f"no decoder can hold the KV of {job.final_context} tokens"
            return out
        target = self.router.prompt(now, job)
        if target is None:
            job.failed = f"no prefill replica can hold the KV of {job.input_tokens} tokens"
            return out
        replica, borrow = target
        if borrow:
            self._change(now, replica, Role.COLOCATED, home=replica.role)
        return out + replica.submit_prompt(now, job)

    def _may_decode(self, r: ReplicaSim, context: int) -> bool:
        """Whether `r` could take a sequence of `context` tokens now: it decodes (or, in a
        splitwise plan, could be borrowed to) and its empty KV memory holds it."""
        decodes = r.role is not Role.PREFILL or self.plan.scheduler is Scheduler.SPLITWISE
        return decodes and r.engine is not None and r.kv.ever_fits(context)

    def _prefill_done(self, now: float, job: Job) -> list[Event]:
        """A PREFILL pipeline finished `job`'s prompt: its first token is out; send its KV on."""
        job.first_token_s = now
        if job.output_tokens <= 1:
            job.last_token_s = now
            return []
        assert job.prefill_replica is not None
        src = self.by_id[job.prefill_replica]
        here, out = self._to_decoder(now, job, src)
        if here:  # Splitwise borrowed this very replica for the token phase: its KV is in place
            assert src.engine is not None
            src.engine.route(job, prompt=False)
            job.kv_start_s = job.kv_end_s = now  # a hand-off that moves nothing (waiting counts)
            out += src.engine.arrive(now, job)
        return out

    def _prefilled(self, now: float, job: Job) -> tuple[bool, list[Event]]:
        """A decode engine prefilled `job` itself: keep it there, or (Splitwise) send it on."""
        assert job.prefill_replica is not None
        src = self.by_id[job.prefill_replica]
        if self.plan.scheduler is not Scheduler.SPLITWISE or src.role is not Role.COLOCATED:
            return True, []
        return self._to_decoder(now, job, src)

    def _to_decoder(self, now: float, job: Job, src: ReplicaSim) -> tuple[bool, list[Event]]:
        """Pick `job`'s decoder; True if that is `src` itself, else the hand-off's events."""
        target = self.router.decoder(now, job, src)
        assert target is not None, "feasibility was checked on arrival"
        dst, borrow = target
        if borrow:
            self._change(now, dst, Role.COLOCATED, home=dst.role)
        if dst is src:
            return True, []
        assert dst.engine is not None
        dst.engine.route(job, prompt=False)
        return False, self._hand_off(now, job, src, dst)

    def _hand_off(self, now: float, job: Job, src: ReplicaSim, dst: ReplicaSim) -> list[Event]:
        engine = dst.engine
        assert engine is not None
        out: list[Event] = engine.kv_incoming(now)
        if self.execution.handoff_at_step_boundary:  # the decoder admits it after its step under way
            at = engine.next_boundary(now)
            if at > now:
                return [*out, Event(at, self._move_kv, job, src, dst)]
        return out + self._move_kv(now, job, src, dst)

    def _move_kv(self, now: float, job: Job, src: ReplicaSim, dst: ReplicaSim) -> list[Event]:
        job.kv_start_s = now
        parts = self._kv_parts(src, dst)
        sizes = [(a, b, kv.bytes(job.input_tokens)) for a, b, kv in parts]
        src.kv_leaving(now, [(a, b, self.cost.transfer_s(a, b, n)) for a, b, n in sizes])
        job.kv_parts_left = len(parts)
        engine = dst.engine
        assert engine is not None

        def part_done(t: float) -> list[Event]:
            job.kv_parts_left -= 1
            if job.kv_parts_left:
                return []
            job.kv_end_s = t
            return engine.kv_arrived(t, job) + src.kv_left(t)

        out: list[Event] = []
        for (a, b, n), k in zip(sizes, self._kv_sources(src, dst), strict=True):
            send = functools.partial(self._send, a, b, n, part_done)
            pipe = src.pipe
            if self.execution.kv_import_pauses_decode and pipe is not None and src.role is Role.PREFILL:
                out += pipe.after_entered(now, k, send)  # the export queues behind the prompts sent before
            else:
                out += send(now)
        return out

    def _send(self, a: str, b: str, n: float, done: Delivered, now: float) -> list[Event]:
        return self.net.send(now, a, b, n, done)

    def _kv_sources(self, src: ReplicaSim, dst: ReplicaSim) -> list[int]:
        """The prefill stage index of each part of `_kv_parts(src, dst)`, in the same order."""
        return [
            k
            for k, ps in enumerate(src.replica.stages)
            for ds in dst.replica.stages
            if max(ps.start, ds.start) < min(ps.end, ds.end)
        ]

    def _kv_parts(self, src: ReplicaSim, dst: ReplicaSim) -> list[tuple[str, str, RangeKv]]:
        """(prefill device, decoder device, layers both hold) for every overlapping stage pair."""
        key = (src.id, dst.id)
        parts = self._parts.get(key)
        if parts is None:
            parts = []
            for ps in src.replica.stages:
                for ds in dst.replica.stages:
                    lo, hi = max(ps.start, ds.start), min(ps.end, ds.end)
                    if lo < hi:
                        parts.append((ps.device, ds.device, RangeKv(self.cost.model, lo, hi)))
            self._parts[key] = parts
        return parts

    # --- roles ----------------------------------------------------------------------------------
    def _control(self, now: float) -> list[Event]:
        """The role controller, planning for the recent arrivals' shape (a simulator knows their
        output lengths on arrival; the runtime estimates them from the requests finished lately)."""
        n = len(self._recent)
        demand = Demand(sum(i for i, _ in self._recent) / n, sum(o for _, o in self._recent) / n)
        context = round(demand.mean_input_tokens + demand.mean_output_tokens / 2)
        loads = [r.load(now, context=context) for r in self.replicas]
        switch = decide_switch(
            loads, self.settings, demand, now, self._last_switch_s, self._switching is not None
        )
        if switch is None:
            return []
        r = self.by_id[switch.replica]
        r.accepting = False  # 1. stop routing to it
        r.switch_to = switch.to
        self._switching = r
        return self._idle(now, r)  # 2. drained already?

    def _idle(self, now: float, r: ReplicaSim) -> list[Event]:
        """`r` may have run out of work: finish its switch, or return it to its Splitwise pool."""
        if r.switch_to is not None and drained(r.load(now)):
            role, r.switch_to = r.switch_to, None
            self._change(now, r, role)  # 3. switch (weights stay resident)
            r.accepting = True  # 4. publish
            self._switching = None
            self._last_switch_s[r.id] = now
        elif r.home_role is not None and returns(r.load(now)):
            self._change(now, r, r.home_role)
        return []

    def _change(self, now: float, r: ReplicaSim, role: Role, home: Role | None = None) -> None:
        r.become(role, home)
        self.roles.append((now, r.id, role.value))

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
            role_switches=len(self.roles),
            roles=tuple(self.roles),
        )


def _p90_context(requests: Sequence[Request]) -> int:
    contexts = sorted(r.input_tokens + r.output_tokens for r in requests)
    return contexts[(9 * (len(contexts) - 1)) // 10] if contexts else 1


def simulate(
    plan: Plan, cost: CostModel, requests: Sequence[Request], ctx: ServingContext | None = None
) -> SimResult:
    """Run `requests` through `plan`; deterministic (no randomness, no wall clock).

    The plan must be valid for the cost model (see `sim.validate.check_plan`)."""
    run = _Run(plan, cost, requests, ctx or ServingContext())
    loop = EventLoop()
    loop.push(run.first_events())
    loop.run()
    return run.result(loop)

"""Where each request goes: the replicas' loads, as `policy.ReplicaLoad`s, handed to the serving
policy. Nothing is decided here; this is only the simulator's side of the policy's interface
(the runtime fills the same views from its live counters).

- "jsq" (e2llm's plans and the baselines built like them): `policy.routing`.
- "splitwise": Splitwise's scheduler with its mixed pool, `policy.mixed_pool`.
"""

from __future__ import annotations

from collections.abc import Sequence

from e2llm.plan.types import Role, Scheduler
from e2llm.policy import mixed_pool, routing
from e2llm.sim.replica import ReplicaSim
from e2llm.sim.state import Job

Target = tuple[ReplicaSim, bool]  # the replica, and whether Splitwise borrows it for this first


class Router:
    def __init__(self, scheduler: Scheduler, replicas: Sequence[ReplicaSim]) -> None:
        self.scheduler = scheduler
        self.replicas = tuple(replicas)
        self._by_id = {r.id: r for r in replicas}

    def prompt(self, now: float, job: Job) -> Target | None:
        """The replica to prefill `job`'s prompt."""
        if self.scheduler is Scheduler.SPLITWISE:
            route = mixed_pool.route_prompt([r.load(now) for r in self.replicas], job.input_tokens)
            return None if route is None else (self._by_id[route.replica], route.borrow)
        typical = job.input_tokens + job.output_tokens // 2  # a MIXED replica's decode rate (its slot wait)
        loads = [
            r.load(now, job.input_tokens, typical if r.role is Role.MIXED else 0)
            for r in self.replicas
            if r.role in (Role.PREFILL, Role.MIXED)
        ]
        got = routing.pick_prefill(loads, job.input_tokens, job.final_context)
        return None if got is None else (self._by_id[got.id], False)

    def decoder(self, now: float, job: Job, prefilled_on: ReplicaSim | None) -> Target | None:
        """The replica to decode `job`, prefilled on `prefilled_on` (None: a whole request of a
        COLOCATED plan)."""
        if self.scheduler is Scheduler.SPLITWISE:
            loads = [r.load(now) for r in self.replicas if r.engine is not None]
            route = mixed_pool.route_token(loads, job.final_context)
            if route is not None:
                return self._by_id[route.replica], route.borrow
            if prefilled_on is not None and prefilled_on.role is Role.COLOCATED:
                return prefilled_on, False  # Splitwise devolves to mixed batching where it is
            got = mixed_pool.least_memory(loads, job.final_context)
        else:
            context = job.input_tokens + job.output_tokens // 2
            loads = [
                r.load(now, context=context)
                for r in self.replicas
                if r.engine is not None and r.role is not Role.PREFILL
            ]
            got = routing.pick_decoder(loads, job.final_context)
        return None if got is None else (self._by_id[got.id], False)

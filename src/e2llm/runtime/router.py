"""Request routing across replicas: the serving policy (`e2llm.policy`) over live views.

Nothing is ranked here. The router builds each live candidate's `policy.ReplicaLoad` from its
counters (`load_view.replica_load`), asks the policy the question the simulator asks it
(`sim/router.py`, the other call site) and maps the answer back to a runner:

- `jsq` (e2llm's plans and the baselines built like them): a prompt goes where
  `routing.pick_prefill` says (PREFILL or MIXED replicas, smallest normalised backlog), a
  prefilled sequence where `routing.pick_decoder` says (fewest outstanding sequences per slot
  among those whose free KV holds it). A MIXED or COLOCATED replica decodes what it prefilled;
  an all-COLOCATED plan routes whole requests with `pick_decoder`, as the simulator does.
- `splitwise`: Splitwise's scheduler with its mixed pool (`policy.mixed_pool`): a replica it
  borrows becomes COLOCATED at once (`ReplicaRunner.become`, its home role kept) and goes back to
  its pool as soon as it is idle (`settle`, called whenever a request leaves a replica).

Roles are read at each pick, so a replica whose role changes is routed by its new role. Lost
replicas (`alive` false) are never candidates; with none left for a phase, `NoLiveReplica`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from e2llm.plan.types import Role, Scheduler
from e2llm.policy import mixed_pool, routing
from e2llm.policy.load import ReplicaLoad
from e2llm.runtime.load_view import replica_load
from e2llm.runtime.replica import ReplicaRunner

# (runner, now, prompt tokens, context) -> its view; tests replay recorded views through it
View = Callable[[ReplicaRunner, float, int, int], ReplicaLoad]
# (runner, its role before, why) after a borrow or a return changed a role
RoleChanged = Callable[[ReplicaRunner, Role, str], None]


class NoLiveReplica(Exception):
    """Every replica that could serve a phase is lost (or none can ever hold the request)."""


class Router:
    def __init__(
        self,
        runners: Sequence[ReplicaRunner],
        scheduler: Scheduler | str = Scheduler.JSQ,
        view: View = replica_load,
        on_role_change: RoleChanged = lambda runner, before, why: None,
    ):
        self.runners = list(runners)
        self.scheduler = Scheduler(scheduler)
        self.view = view
        self.on_role_change = on_role_change
        if not self.prefillers or not self.decoders:
            raise ValueError("a plan needs at least one replica that prefills and one that decodes")

    @property
    def prefillers(self) -> list[ReplicaRunner]:
        return [r for r in self.runners if r.replica.does_prefill]

    @property
    def decoders(self) -> list[ReplicaRunner]:
        return [r for r in self.runners if r.replica.does_decode]

    @property
    def colocated(self) -> bool:
        return all(r.role is Role.COLOCATED for r in self.runners)

    def unavailable_reason(self) -> str | None:
        """Why no request can be served now (a phase without a live replica), or None. Under
        Splitwise's mixed pool any replica may be borrowed for either phase."""
        live = self._live()
        if self.scheduler is Scheduler.SPLITWISE:
            able = {"prefill": live, "decode": [r for r in live if r.slots.concurrency > 0]}
        else:
            able = {
                "prefill": [r for r in live if r.replica.does_prefill],
                "decode": [r for r in live if r.replica.does_decode],
            }
        for phase, runners in able.items():
            if not runners:
                return f"no live replica can {phase}"
        return None

    def _live(self) -> list[ReplicaRunner]:
        return [r for r in self.runners if r.alive]

    def _by_id(self, runners: Sequence[ReplicaRunner], got: ReplicaLoad | None) -> ReplicaRunner | None:
        return None if got is None else next(r for r in runners if r.replica.id == got.id)

    def pick_prefill(self, prompt_tokens: int, context: int = 0) -> ReplicaRunner:
        """The replica to prefill a prompt of `prompt_tokens` tokens whose final context (prompt
        plus `max_tokens`) is `context` (default: the prompt)."""
        context = max(context, prompt_tokens)
        now = time.monotonic()
        live = self._live()
        if self.scheduler is Scheduler.SPLITWISE:
            route = mixed_pool.route_prompt([self.view(r, now, 0, 0) for r in live], prompt_tokens)
            return self._routed(live, route, "a long prompt queue", "prefill")
        if self.colocated:
            live = [r for r in live if r.slots.concurrency > 0]
            loads = [self.view(r, now, prompt_tokens, context) for r in live]
            got = self._by_id(live, routing.pick_decoder(loads, context))
        else:
            live = [r for r in live if r.role in (Role.PREFILL, Role.MIXED)]
            typical = (prompt_tokens + context) // 2  # a MIXED replica's decode rate (its slot wait)
            loads = [self.view(r, now, prompt_tokens, typical if r.role is Role.MIXED else 0) for r in live]
            got = self._by_id(live, routing.pick_prefill(loads, prompt_tokens, context))
        return self._found(got, live, "prefill", prompt_tokens)

    def pick_decoder(self, prefilled_on: ReplicaRunner, context: int = 0, typical: int = 0) -> ReplicaRunner:
        """The replica to decode a sequence prefilled on `prefilled_on`, final context `context`
        (prompt plus `max_tokens`), about `typical` tokens of context while it decodes (for the
        decoders' rates: the prompt plus half of `max_tokens`)."""
        now = time.monotonic()
        live = [r for r in self._live() if r.slots.concurrency > 0]
        if self.scheduler is Scheduler.SPLITWISE:
            loads = [self.view(r, now, 0, 0) for r in live]
            route = mixed_pool.route_token(loads, context)
            if route is not None:
                return self._routed(live, route, "full token memory", "decode")
            if prefilled_on.role is Role.COLOCATED:
                return prefilled_on  # Splitwise devolves to mixed batching where it is
            return self._found(
                self._by_id(live, mixed_pool.least_memory(loads, context)), live, "decode", context
            )
        if prefilled_on.role in (Role.COLOCATED, Role.MIXED):
            return prefilled_on  # its KV is in place
        live = [r for r in live if r.role is not Role.PREFILL]
        loads = [self.view(r, now, 0, typical) for r in live]
        return self._found(self._by_id(live, routing.pick_decoder(loads, context)), live, "decode", context)

    def settle(self, runner: ReplicaRunner) -> None:
        """Splitwise's return: a borrowed replica goes back to its pool once it is idle."""
        home = runner.home_role
        if home is None or not runner.alive:
            return
        if mixed_pool.returns(self.view(runner, time.monotonic(), 0, 0)):
            runner.become(home)
            self.on_role_change(runner, Role.COLOCATED, "idle: back to its pool")

    def _routed(
        self, live: Sequence[ReplicaRunner], route: mixed_pool.Route | None, trigger: str, phase: str
    ) -> ReplicaRunner:
        if route is None:
            raise NoLiveReplica(f"no live replica can {phase}")
        runner = next(r for r in live if r.replica.id == route.replica)
        if route.borrow:
            before = runner.role
            runner.become(Role.COLOCATED, home=before)
            self.on_role_change(runner, before, f"borrowed into the mixed pool: {trigger}")
        return runner

    def _found(
        self, got: ReplicaRunner | None, candidates: Sequence[ReplicaRunner], phase: str, tokens: int
    ) -> ReplicaRunner:
        if got is not None:
            return got
        if not candidates:
            raise NoLiveReplica(f"no live replica can {phase}")
        raise NoLiveReplica(f"no {phase} replica can hold the KV of {tokens} tokens")

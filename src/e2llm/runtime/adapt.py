"""Run-time role switching: the role controller's decisions (`policy.controller`), executed live.

Every `CONTROL_PERIOD_S` of wall time (the simulator looks as often, in simulated time) the
deployment's control loop calls `tick`: the controller builds each live replica's view
(`load_view.replica_load`, at the recent requests' typical context) and asks
`policy.controller.decide_switch` whether a replica should change role, for the recent requests'
shape (`Demand`: mean prompt tokens of the recent arrivals, mean output of the recent finished
requests, `drift.WorkloadWindow`). A drift re-plan may also set target roles (`retarget`), which
are switched to one at a time before the policy is asked again. A switch follows the policy's
protocol, with the weights staying resident (no actor restarts, nothing reloaded):

1. stop routing to it (`accepting` false: the router skips it for new work);
2. drain: it finishes what it holds (prompts queued there are prefilled and their KV leaves; a
   decoder's sequences decode to their end) until `policy.controller.drained` says so. A decoder
   that still holds sequences after `DRAIN_TIMEOUT_S` migrates them instead: each is re-prefilled
   (prompt plus the tokens generated so far) on the replicas now serving, and its stream goes on
   from the next token (`lifecycle`), so no request is lost;
3. switch (`ReplicaRunner.become`);
4. publish: it takes work again, in its new role.

Each switch is logged, counted in `/metrics` (`e2llm_role_switches_total`, `e2llm_replica_role`)
and recorded as a dashboard event (`Fleet.role_changed`). With `PolicySettings.adapt` off the
controller never runs: the plan's roles stay as planned (the paper). Splitwise plans use their
own mixed pool instead (`router`), as in the simulator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from e2llm.plan.types import Role, Scheduler
from e2llm.policy import controller
from e2llm.policy.controller import Demand
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.fleet import Fleet
from e2llm.runtime.load_view import replica_load
from e2llm.runtime.loss import Evicted
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.router import View

log = logging.getLogger(__name__)

CONTROL_PERIOD_S = 1.0  # how often the controller looks (as `sim.simulator.CONTROL_PERIOD_S`)
DRAIN_TIMEOUT_S = 60.0  # a draining decoder's sequences migrate after this long
NO_DEMAND = Demand(1.0, 1.0)


class RoleController:
    def __init__(
        self,
        fleet: Fleet,
        settings: PolicySettings,
        view: View = replica_load,
        demand: Callable[[float], Demand] = lambda now: NO_DEMAND,
    ):
        self.fleet = fleet
        self.settings = settings
        self.view = view
        self.demand = demand  # the recent requests' shape at a time
        self.last_switch_s: dict[int, float] = {}  # replica id -> when it last changed role
        self.switching: ReplicaRunner | None = None  # stopped taking work, draining
        self.switch_to: Role | None = None
        self.targets: dict[int, Role] = {}  # roles a drift re-plan asked for, not reached yet
        self._drain_since = 0.0
        self._generation = fleet.generation

    @property
    def enabled(self) -> bool:
        """Role switching runs for e2llm's disaggregated plans with `adapt` on (Splitwise has its
        mixed pool; an all-COLOCATED plan has no roles to switch)."""
        plan = self.fleet.plan
        colocated = all(r.role is Role.COLOCATED for r in plan.replicas)
        return self.settings.adapt and plan.scheduler is not Scheduler.SPLITWISE and not colocated

    def loads(self, now: float, demand: Demand) -> list[ReplicaLoad]:
        """Every live replica's view, its decode rate at the demand's typical context."""
        context = round(demand.mean_input_tokens + demand.mean_output_tokens / 2)
        return [self.view(r, now, 0, context) for r in self.fleet.runners if r.alive]

    def decide(self, loads: list[ReplicaLoad], demand: Demand, now: float) -> controller.Switch | None:
        """The policy's decision for these views (the runtime's call site of `decide_switch`)."""
        in_flight = self.switching is not None
        return controller.decide_switch(loads, self.settings, demand, now, self.last_switch_s, in_flight)

    def heading(self, runner: ReplicaRunner) -> Role:
        """The role `runner` has, or the one it is draining for."""
        if runner is self.switching and self.switch_to is not None:
            return self.switch_to
        return runner.role

    def retarget(self, roles: Mapping[int, Role]) -> None:
        """Switch replicas (by id) to these roles, one at a time, by the protocol."""
        self.targets = {i: role for i, role in roles.items()}

    def tick(self, now: float) -> None:
        """One look: finish the switch in flight once drained, else maybe start one."""
        if self.fleet.generation != self._generation:  # a re-made plan serves: start afresh
            self._generation = self.fleet.generation
            self.last_switch_s.clear()
            self.targets.clear()
            self.switching = self.switch_to = None
        if self.switching is not None:
            self._drain(self.switching, now)
            return
        switch = self._next_target()
        if switch is None:
            demand = self.demand(now)
            switch = self.decide(self.loads(now, demand), demand, now)
        if switch is None:
            return
        runner = next(r for r in self.fleet.runners if r.replica.id == switch.replica)
        runner.accepting = False  # 1. stop routing to it
        self.switching, self.switch_to, self._drain_since = runner, switch.to, now
        log.info(
            "replica %s: switching %s -> %s; draining %d requests",
            runner.label,
            runner.role.value,
            switch.to.value,
            runner.requests_here,
        )
        self._drain(runner, now)

    def _next_target(self) -> controller.Switch | None:
        """The first target switch that leaves its pool another live replica (a pool is never
        emptied, so of two replicas trading roles the one joining a pool of one moves first)."""
        live = [r for r in self.fleet.runners if r.alive]
        now_roles = {r.replica.id: r.role for r in live}
        self.targets = {i: role for i, role in self.targets.items() if now_roles.get(i, role) is not role}
        for runner in live:
            role = self.targets.get(runner.replica.id)
            if role is not None and any(r is not runner and r.role is runner.role for r in live):
                return controller.Switch(runner.replica.id, role)
        return None

    def _drain(self, runner: ReplicaRunner, now: float) -> None:
        """2. wait until drained (migrating a decoder's sequences after the timeout), then
        3. switch and 4. publish."""
        assert self.switch_to is not None
        if not runner.alive or runner not in self.fleet.runners:
            self.switching = self.switch_to = None  # lost or retired meanwhile: nothing to switch
            return
        if not controller.drained(self.view(runner, now, 0, 0)):
            if now - self._drain_since >= DRAIN_TIMEOUT_S and runner.decode_sequences:
                moved = runner.evict_all(Evicted(runner.label, f"switches to {self.switch_to.value}"))
                log.info("replica %s: drain timed out, %d sequences migrate", runner.label, moved)
            return
        before = runner.role
        runner.become(self.switch_to)  # 3. switch: weights stay resident
        runner.accepting = True  # 4. publish
        self.last_switch_s[runner.replica.id] = now
        if self.targets.get(runner.replica.id) is runner.role:
            del self.targets[runner.replica.id]
        self.switching = self.switch_to = None
        self.fleet.role_changed(runner, before, f"drained in {now - self._drain_since:.1f} s")

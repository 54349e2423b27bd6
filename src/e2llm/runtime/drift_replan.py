"""Re-planning while serving when the live workload drifts from the shape the plan was made for.

Each control tick the deployment's `WorkloadWindow` gives the shape of the recent requests; when
the `DriftDetector` says it has drifted far enough for long enough, the plan's embedded
`WorkloadShape` is replaced by the observed one and the deployment plans again for it:

1. roles and concurrency first: the planner's role assignment (`capacity.best_roles`, i.e.
   `plan.roles.assign_roles`) over the groups already running, with their layers where they are;
2. a full re-plan (`PlanSwitcher.candidate`: the planner on the same devices), scored the same way;
3. regrouping only if roles cannot absorb the drift: the re-made plan is switched to (new actors,
   the old ones retire, `plan_switch`) when its objective beats the roles-only one by
   `REGROUP_MARGIN`; otherwise the new roles are reached live, one switch at a time by the role
   controller's protocol (`RoleController.retarget`, weights resident) and each decoder's batch
   is set to its new concurrency.

Both outcomes are logged and recorded as a dashboard event (`replan`). Drift re-planning runs
with the role controller (`--adapt on`) on plans that embed what re-planning needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from e2llm.plan.role_scoring import RoleAssignment
from e2llm.plan.types import Plan, Role
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.runtime.adapt import RoleController
from e2llm.runtime.capacity import best_roles, plan_capacities, role_rates
from e2llm.runtime.drift import DriftDetector, DriftSettings, WorkloadWindow
from e2llm.runtime.events import EventKind, RecordEvent, ignore_event
from e2llm.runtime.fleet import Fleet
from e2llm.runtime.plan_switch import PlanSwitcher
from e2llm.runtime.replica import ReplicaRunner

log = logging.getLogger(__name__)

REGROUP_MARGIN = 0.1  # a regrouped plan must beat the roles-only one by this share of its objective
OBJECTIVE_TIE = 1e-9  # objectives this close are equal (summation order noise)


def describe(shape: WorkloadShape) -> str:
    return (
        f"{shape.mean_input_tokens:.0f} in / {shape.mean_output_tokens:.0f} out tokens, "
        f"a request every {shape.interval_s:.2f} s"
    )


def regroup_pays(roles_only: RoleAssignment | None, regrouped: RoleAssignment | None) -> bool:
    """Whether the re-made plan's groups serve the shape clearly better than the running ones."""
    if regrouped is None:
        return False
    if roles_only is None:
        return True
    margin = max(OBJECTIVE_TIE, REGROUP_MARGIN * abs(roles_only.objective))
    return regrouped.objective < roles_only.objective - margin


def fewest_switches(
    runners: Sequence[ReplicaRunner], roles: Sequence[Role], shape: WorkloadShape, a: RoleAssignment
) -> list[tuple[bool, int]]:
    """`a`'s (PREFILL?, concurrency) per runner, exchanged between replicas that are alike (the
    same rates in both roles for `shape`) so that as many as possible keep `roles` (the roles
    they have, or are switching to): the assignment is the same, fewer replicas have to drain."""
    groups: dict[object, list[int]] = {}
    for i, r in enumerate(runners):
        groups.setdefault(role_rates(r.capacity, shape), []).append(i)
    out = list(zip(a.prefill, a.concurrency, strict=True))
    for members in groups.values():
        wanted = sorted((out[i] for i in members), key=lambda x: not x[0])  # PREFILL targets first
        keep_prefill = sorted(members, key=lambda i: roles[i] is not Role.PREFILL)
        for i, target in zip(keep_prefill, wanted, strict=True):
            out[i] = target
    return out


class DriftReplanner:
    def __init__(
        self,
        fleet: Fleet,
        plans: PlanSwitcher,
        roles: RoleController,
        window: WorkloadWindow,
        settings: DriftSettings,
        record_event: RecordEvent = ignore_event,
    ):
        self.fleet, self.plans, self.roles, self.window = fleet, plans, roles, window
        self.settings = settings
        self.record_event = record_event
        self.detector = DriftDetector(fleet.plan.workload or WorkloadShape(1.0, 1.0, 1.0), settings)
        self.replans = 0  # drift re-plans done (roles-only or regrouped)
        self.observed: WorkloadShape | None = None  # the live shape at the last tick
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self.roles.enabled and self.fleet.plan.can_replan

    def tick(self, now: float) -> None:
        if not self.enabled or (self._task is not None and not self._task.done()):
            return
        base = self.fleet.plan.workload
        assert base is not None  # can_replan
        self.observed = self.window.shape(now, base, self.settings.min_requests)
        shape = self.detector.observe(now, self.observed)
        if shape is not None:
            drifted = f"workload drifted by {self.detector.last:.2f}: now {describe(shape)}"
            text = f"{drifted}; planned for {describe(base)}"
            log.info("%s", text)
            self._task = asyncio.get_running_loop().create_task(self.respond(shape))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def respond(self, shape: WorkloadShape) -> None:
        """Re-plan roles and concurrency for `shape`; regroup only if that does not absorb it."""
        plan = self.fleet.plan
        assert plan.params is not None
        objective = plan.params.objective
        runners = self._switchable()
        roles_only = best_roles([r.capacity for r in runners], shape, objective)
        try:
            new = await asyncio.to_thread(self.plans.candidate, shape)
        except Exception as e:  # no plan for the new shape: serving goes on as is
            text = f"re-planning for the drifted workload failed: {type(e).__name__}: {e}"
            log.error("%s", text)
            self.record_event(EventKind.REPLAN_FAILED, text)
            return
        regrouped = best_roles(list(plan_capacities(new).values()), shape, objective)
        self.replans += 1
        if regroup_pays(roles_only, regrouped) or roles_only is None:
            log.info("drift: the running groups cannot absorb it; switching to a regrouped plan")
            await self.plans.replan(plan=new)
            return
        self._retarget(plan, shape, roles_only)

    def _switchable(self) -> list[ReplicaRunner]:
        """The live replicas a role assignment covers (MIXED ones keep doing both phases)."""
        return [r for r in self.fleet.runners if r.alive and r.role in (Role.PREFILL, Role.DECODER)]

    def _retarget(self, plan: Plan, shape: WorkloadShape, a: RoleAssignment) -> None:
        runners = self._switchable()
        targets = {}
        heading = [self.roles.heading(r) for r in runners]  # a switch in flight is not undone
        assigned = fewest_switches(runners, heading, shape, a)
        for runner, (prefill, concurrency) in zip(runners, assigned, strict=True):
            targets[runner.replica.id] = Role.PREFILL if prefill else Role.DECODER
            if not prefill:
                runner.slots.concurrency = concurrency
        self.roles.retarget(targets)
        self.fleet.plan = dataclasses.replace(plan, workload=shape)  # re-plans from now on use it
        roles = ", ".join(f"{i}: {r.value}" for i, r in targets.items())
        text = f"re-planned roles for the drifted workload ({describe(shape)}), groups kept: {roles}"
        log.info("%s", text)
        self.record_event(EventKind.REPLAN, text)

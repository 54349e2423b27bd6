"""Switching plans live: re-plan after a loss (debounced) or on request, start the new plan's
actors while the old plan serves on, route new requests to the new plan, retire the old one.

`REPLAN_DEBOUNCE_S` after the last loss of a current replica (or on `POST /admin/replan`) the
planner runs again on the plan's embedded cluster minus the lost replicas' devices and those no
Ray node advertises (`e2llm.runtime.replan`); the new plan's actors start off the event loop,
then new requests go to the new plan (generation + 1, replica labels `ID@gN`) and the old
replicas retire once idle (or after `RETIRE_TIMEOUT_S`, when what is left there migrates). The
full cluster stays the base, so a device left out by one re-plan is taken back by the next once
it is available again. Hand-written plans (no embedded cluster) are not re-planned; they serve
on with the replicas that remain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from e2llm.errors import InputError
from e2llm.plan.types import Plan
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.runtime.cluster import advertised_devices
from e2llm.runtime.events import EventKind, RecordEvent, ignore_event
from e2llm.runtime.fleet import Fleet
from e2llm.runtime.plans import describe_replica, plan_devices
from e2llm.runtime.replan import replanned
from e2llm.runtime.replica import ReplicaRunner

log = logging.getLogger(__name__)

REPLAN_DEBOUNCE_S = 1.0  # re-plan this long after the last replica loss
RETIRE_TIMEOUT_S = 120.0  # the old plan's replicas get this long to finish their requests
RETIRE_POLL_S = 0.5
NO_REPLAN = (
    "the plan embeds no cluster, model spec, workload or planner parameters: re-planning is not possible"
)

# Starts a plan's replicas (blocking; run off the loop): (plan, its generation) -> runners.
StartReplicas = Callable[[Plan, int], list[ReplicaRunner]]


def describe_plan_replicas(plan: Plan) -> str:
    """Each replica of `plan` on one line, `; `-separated (for the event log)."""
    return "; ".join(describe_replica(r) for r in plan.replicas)


class PlanSwitcher:
    def __init__(self, fleet: Fleet, start_replicas: StartReplicas, record_event: RecordEvent = ignore_event):
        self.fleet = fleet
        self._start_replicas = start_replicas
        self.record_event = record_event
        self.replanning = False
        self.error: str | None = None if fleet.plan.can_replan else NO_REPLAN  # why the last failed
        self.last_switch_s: float | None = None  # loss (or request) -> new plan serving
        self.closing = False
        self._cluster = fleet.plan.cluster
        self._first_devices = plan_devices(fleet.plan)
        self._lock = asyncio.Lock()
        self._due = 0.0
        self._pending: asyncio.Task[None] | None = None
        self._retirements: set[asyncio.Task[None]] = set()

    @property
    def first_devices(self) -> list[str]:
        """The devices the first plan used (a re-plan takes back those that return)."""
        return list(self._first_devices)

    def devices_left_out(self) -> list[str]:
        """Devices the first plan used that the current one does not (lost, not yet back)."""
        in_use = set(self.fleet.devices_in_use())
        return [d for d in self._first_devices if d not in in_use]

    def stop(self) -> None:
        self.closing = True
        for task in [self._pending, *self._retirements]:
            if task is not None:
                task.cancel()

    # ---- debounced re-plan after a loss ----------------------------------------------------
    def schedule(self) -> None:
        """Re-plan `REPLAN_DEBOUNCE_S` after the last loss: losses close together (a node with
        several devices) make one re-plan."""
        if self.error == NO_REPLAN or self.closing:
            return
        loop = asyncio.get_running_loop()
        self._due = loop.time() + REPLAN_DEBOUNCE_S
        if self._pending is None or self._pending.done():
            self._pending = loop.create_task(self._replan_when_due(loop.time()))

    async def _replan_when_due(self, since: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while (wait := self._due - loop.time()) > 0:
                await asyncio.sleep(wait)
            due = self._due
            await self.replan(since)
            if self._due == due:  # no loss while re-planning
                return
            since = due - REPLAN_DEBOUNCE_S

    # ---- re-plan and switch ----------------------------------------------------------------
    def candidate(self, workload: WorkloadShape | None = None) -> Plan:
        """The plan a re-plan would make now (blocking: run it off the event loop), for
        `workload` instead of the plan's own shape when given (a drift re-plan)."""
        fleet = self.fleet
        plan = fleet.plan if workload is None else dataclasses.replace(fleet.plan, workload=workload)
        leave_out = {s.device for r in fleet.runners if not r.alive for s in r.replica.stages}
        return replanned(plan, self._cluster, leave_out, advertised_devices())

    async def replan(self, since: float | None = None, plan: Plan | None = None) -> bool:
        """Plan again on the cluster's devices minus those of lost replicas (and any no Ray node
        advertises), start the new plan's actors off the event loop, then route new requests to
        it; requests already on the old plan's replicas finish there. False (with `error` set)
        when no new plan could be made or started: serving goes on as is. `plan`: switch to this
        one (made by `candidate`) instead of planning again."""
        if self.error == NO_REPLAN:
            return False
        loop = asyncio.get_running_loop()
        since = loop.time() if since is None else since
        async with self._lock:
            fleet = self.fleet
            leave_out = {s.device for r in fleet.runners if not r.alive for s in r.replica.stages}
            log.info("re-planning without devices %s", sorted(leave_out) or "none")
            self.replanning = True
            try:
                if plan is None:
                    advertised = await asyncio.to_thread(advertised_devices)
                    plan = await asyncio.to_thread(
                        replanned, fleet.plan, self._cluster, leave_out, advertised
                    )
                runners = await asyncio.to_thread(self._start_replicas, plan, fleet.generation + 1)
            except Exception as e:
                # `error` is public (`/health`): an InputError says what is wrong with the devices
                # left (no feasible plan...); anything else (a bug, an actor that failed to start)
                # is told only here, with its traceback
                known = isinstance(e, InputError)
                self.error = f"re-planning failed: {e if known else 'internal error, see the server log'}"
                text = f"{self.error}; serving on with plan generation {fleet.generation}"
                log.error("%s", text, exc_info=None if known else e)
                self.record_event(EventKind.REPLAN_FAILED, text)
                return False
            finally:
                self.replanning = False
            if self.closing:  # shut down while the new actors loaded: they serve nothing
                for runner in runners:
                    runner.mark_lost("shutting down")
                return False
            for runner in runners:
                runner.start()
            old = fleet.switch(plan, runners)
            self.error = None
            self.last_switch_s = loop.time() - since
            left_out = ",".join(self.devices_left_out()) or "none"
            text = (
                f"switched to plan generation {fleet.generation}: {len(runners)} replicas on devices "
                f"{','.join(fleet.devices_in_use())} (left out: {left_out}), "
                f"{self.last_switch_s:.1f} s after the trigger"
            )
            log.info("%s", text)
            self.record_event(EventKind.REPLAN, f"{text}: {describe_plan_replicas(plan)}")
            task = loop.create_task(self._retire(old, fleet.generation))
            self._retirements.add(task)
            task.add_done_callback(self._retirements.discard)
            return True

    async def _retire(self, old: list[ReplicaRunner], generation: int) -> None:
        """Wait until the old replicas are idle (or `RETIRE_TIMEOUT_S`), then take them out: a
        request still there gets `ReplicaLost` and migrates to the new plan; none is dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETIRE_TIMEOUT_S
        idle_polls = 0
        while idle_polls < 2 and loop.time() < deadline:
            busy = any(r.alive and r.busy for r in old)
            idle_polls = 0 if busy else idle_polls + 1
            await asyncio.sleep(RETIRE_POLL_S)
        left = sum(r.requests_here for r in old if r.alive)
        self.fleet.retired(old)
        for runner in old:
            runner.mark_lost(f"replaced by plan generation {generation}")
            await runner.stop()
        log.info(
            "retired %d replicas of the plan before generation %d (%d requests still there migrate)",
            len(old),
            generation,
            left,
        )

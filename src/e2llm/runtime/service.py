"""A running deployment of a plan: what the HTTP API serves from.

`Deployment.launch` starts the plan's stage actors and waits for their weights (`launch`); the
deployment then ties the parts together, one concern each:
- `fleet.Fleet`: the replicas running now (current plan, retiring ones), the router over them,
  and which replica a dead actor belonged to;
- `lifecycle.RequestLifecycle`: one request from prefill through hand-off and decode to its end,
  migrated when its replica is lost (`submit`);
- `plan_switch.PlanSwitcher`: re-planning after a loss (debounced) or on `POST /admin/replan`,
  switching to the new plan live and retiring the old one;
- `replica.ReplicaRunner`: one replica's prefill and continuous-batching decode loop;
- `adapt.RoleController`: run-time role switching by the serving policy (`PolicySettings.adapt`).
Tokens reach the caller through `Generation.events`; a caller that goes away calls
`Generation.cancel()` and the KV is freed on every stage that holds it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from e2llm.plan.types import Plan
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.adapt import CONTROL_PERIOD_S, RoleController
from e2llm.runtime.drift import DriftSettings, WorkloadWindow
from e2llm.runtime.drift_replan import DriftReplanner
from e2llm.runtime.events import EventKind
from e2llm.runtime.fleet import Fleet
from e2llm.runtime.generation import Generation
from e2llm.runtime.launch import LaunchOptions, start_runners
from e2llm.runtime.lifecycle import RequestLifecycle
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.plan_switch import PlanSwitcher, StartReplicas, describe_plan_replicas
from e2llm.runtime.replica import ReplicaRunner

DEFAULT_OPTIONS = LaunchOptions()
SHUTTING_DOWN = "the server is shutting down; retry on another server or later"
FIXED_ROLES = PolicySettings()  # the library default: the plan's roles stay as planned
DEFAULT_DRIFT = DriftSettings()

log = logging.getLogger(__name__)


class Deployment:
    def __init__(
        self,
        plan: Plan,
        runners: list[ReplicaRunner],
        metrics: ServingMetrics,
        start_replicas: StartReplicas,
        settings: PolicySettings = FIXED_ROLES,
        drift: DriftSettings = DEFAULT_DRIFT,
    ):
        self.metrics = metrics
        self.settings = settings
        self.fleet = fleet = Fleet(plan, runners, metrics.record_event)
        self.window = WorkloadWindow(drift.window_s, time.monotonic())
        self.requests = RequestLifecycle(fleet, metrics, self.window)
        self.plans = PlanSwitcher(fleet, start_replicas, metrics.record_event)
        base = plan.workload or WorkloadShape(1.0, 1.0, 1.0)
        self.roles = RoleController(fleet, settings, demand=lambda now: self.window.demand(now, base))
        self.drift = DriftReplanner(fleet, self.plans, self.roles, self.window, drift, metrics.record_event)
        fleet.on_loss = lambda runner: self.plans.schedule()
        self.closing = False
        self._control: asyncio.Task[None] | None = None

    @classmethod
    def launch(
        cls,
        plan: Plan,
        model_path: str,
        options: LaunchOptions = DEFAULT_OPTIONS,
        settings: PolicySettings = FIXED_ROLES,
        drift: DriftSettings = DEFAULT_DRIFT,
    ) -> Deployment:
        """Start every stage actor (Ray must be initialised) and wait for their weights."""
        metrics = ServingMetrics()

        def start(plan: Plan, generation: int) -> list[ReplicaRunner]:
            return start_runners(plan, model_path, options, metrics, generation, settings.chunk_tokens)

        return cls(plan, start(plan, 0), metrics, start, settings, drift)

    def start(self) -> None:
        """Start the decode loops and the control loop; call from inside the serving loop."""
        self.fleet.start()
        if self.roles.enabled:
            self._control = asyncio.get_running_loop().create_task(self._control_loop())
        plan = self.fleet.plan
        self.metrics.record_event(
            EventKind.PLAN_STARTED, f"serving plan {plan.system}: {describe_plan_replicas(plan)}"
        )

    async def stop(self) -> None:
        self.closing = True
        if self._control is not None:
            self._control.cancel()
        self.drift.stop()
        self.plans.stop()
        self.requests.fail_all(SHUTTING_DOWN)
        self.requests.cancel_all()
        await self.fleet.stop()

    # ---- shutdown (`http_serve`): new requests refused, then a bounded drain --------------------
    def begin_shutdown(self) -> int:
        """Refuse new requests (503) from now on; returns the requests still in flight."""
        self.closing = True
        return self.requests.in_flight

    def abort(self) -> int:
        """End every request in flight with a 503 (the drain time is over); returns how many."""
        return self.requests.fail_all(SHUTTING_DOWN)

    async def _control_loop(self) -> None:
        """Every `CONTROL_PERIOD_S`: the role controller's look, then the drift watch's."""
        while True:
            await asyncio.sleep(CONTROL_PERIOD_S)
            now = time.monotonic()
            try:
                self.roles.tick(now)
                self.drift.tick(now)
            except Exception:  # a bug here must not stop serving; logged with its traceback
                log.exception("the control loop failed; it looks again in %.0f s", CONTROL_PERIOD_S)

    def kill_actors(self) -> None:
        self.fleet.kill_actors()

    def unavailable_reason(self) -> str | None:
        """Why new requests are refused right now (503), or None while serving."""
        if self.closing:
            return "shutting down"
        return self.fleet.router.unavailable_reason()

    def submit(self, gen: Generation) -> None:
        """Start serving `gen` in the background; results arrive on `gen.events`."""
        self.requests.submit(gen)

    async def replan(self) -> bool:
        """Re-plan now on every available device (see `PlanSwitcher.replan`)."""
        return await self.plans.replan()

    async def stage_stats(self) -> list[dict[str, Any]]:
        return await self.fleet.stage_stats()

    def adaptation(self) -> dict[str, Any]:
        """The roles now and how they got there, for `/health`."""
        switching, observed = self.roles.switching, self.drift.observed
        return {
            "adapt": self.roles.enabled,  # run-time role switching on
            "roles": {r.label: r.role.value for r in self.fleet.runners},  # what each replica does now
            "role_switches": self.metrics.switch_count(),  # role changes so far (borrows included)
            "switching": None if switching is None else switching.label,  # draining for a switch
            "workload": None if observed is None else dataclasses.asdict(observed),  # the live shape
            "drift": round(self.drift.detector.last, 3),  # how far it is from the planned one
            "drift_replans": self.drift.replans,
        }

    async def status(self) -> dict[str, Any]:
        """The deployment's state as `/health` reports it (a dashboard's status route extends
        it): degraded while a replica is lost or a device of the first plan is left out."""
        fleet, plans = self.fleet, self.plans
        stages = await fleet.stage_stats()
        lost = fleet.lost_replicas()
        left_out = plans.devices_left_out()
        return {
            "status": "degraded" if lost or left_out else "ok",
            "lost_replicas": lost,  # out of service: a stage actor (process or node) died
            "migrations": self.requests.migrations,
            "plan_generation": fleet.generation,  # + 1 at each switch to a re-made plan
            "replanning": plans.replanning,
            "replan_error": plans.error,  # why the last re-plan failed, or cannot run
            "last_switch_s": plans.last_switch_s,  # loss -> new plan serving, last time
            "devices": fleet.devices_in_use(),
            **self.adaptation(),
            "devices_left_out": left_out,
            "queues": fleet.queue_lengths(),
            "stages": [
                {k: s[k] for k in ("replica", "device", "pid", "kv_bytes", "sequences")} for s in stages
            ],
        }

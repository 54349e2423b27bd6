"""A running deployment of a plan: what the HTTP API serves from.

`Deployment.launch` starts the plan's stage actors and waits for their weights (`launch`); the
deployment then ties the parts together, one concern each:
- `fleet.Fleet`: the replicas running now (current plan, retiring ones), the router over them,
  and which replica a dead actor belonged to;
- `lifecycle.RequestLifecycle`: one request from prefill through hand-off and decode to its end,
  migrated when its replica is lost (`submit`);
- `plan_switch.PlanSwitcher`: re-planning after a loss (debounced) or on `POST /admin/replan`,
  switching to the new plan live and retiring the old one;
- `replica.ReplicaRunner`: one replica's prefill and continuous-batching decode loop.
Tokens reach the caller through `Generation.events`; a caller that goes away calls
`Generation.cancel()` and the KV is freed on every stage that holds it.
"""

from __future__ import annotations

from typing import Any

from e2llm.plan.types import Plan
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


class Deployment:
    def __init__(
        self,
        plan: Plan,
        runners: list[ReplicaRunner],
        metrics: ServingMetrics,
        start_replicas: StartReplicas,
    ):
        self.metrics = metrics
        self.fleet = Fleet(plan, runners, metrics.record_event)
        self.requests = RequestLifecycle(self.fleet, metrics)
        self.plans = PlanSwitcher(self.fleet, start_replicas, metrics.record_event)
        self.fleet.on_loss = lambda runner: self.plans.schedule()
        self.closing = False

    @classmethod
    def launch(cls, plan: Plan, model_path: str, options: LaunchOptions = DEFAULT_OPTIONS) -> Deployment:
        """Start every stage actor (Ray must be initialised) and wait for their weights."""
        metrics = ServingMetrics()

        def start(plan: Plan, generation: int) -> list[ReplicaRunner]:
            return start_runners(plan, model_path, options, metrics, generation)

        return cls(plan, start(plan, 0), metrics, start)

    def start(self) -> None:
        """Start the decode loops; call from inside the serving event loop."""
        self.fleet.start()
        plan = self.fleet.plan
        self.metrics.record_event(
            EventKind.PLAN_STARTED, f"serving plan {plan.system}: {describe_plan_replicas(plan)}"
        )

    async def stop(self) -> None:
        self.closing = True
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
            "devices_left_out": left_out,
            "queues": fleet.queue_lengths(),
            "stages": [
                {k: s[k] for k in ("replica", "device", "pid", "kv_bytes", "sequences")} for s in stages
            ],
        }

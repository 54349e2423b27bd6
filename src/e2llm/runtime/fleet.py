"""The replicas a deployment runs: the current plan's, which requests are routed to, and the
retiring ones of earlier plans, which only finish the requests they hold.

The fleet attributes a loss to the replica that owned the dead actor (`lost`; Ray names the
actor where it can), logs and records it (`record_event`, the dashboard's event log), and tells
the deployment when a replica of the current plan is lost (`on_loss`: it re-plans). `switch`
puts a new plan's replicas in front; the old ones retire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from e2llm.plan.types import Plan, Role
from e2llm.runtime.events import EventKind, RecordEvent, ignore_event
from e2llm.runtime.loss import ReplicaLost, is_actor_loss, lost_actor_id
from e2llm.runtime.plans import plan_devices
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.router import Router

log = logging.getLogger(__name__)


class Fleet:
    def __init__(
        self, plan: Plan, runners: Sequence[ReplicaRunner], record_event: RecordEvent = ignore_event
    ):
        self.record_event = record_event
        self.generation = 0  # + 1 at each switch to a re-made plan
        self.retiring: list[ReplicaRunner] = []  # earlier plans' replicas finishing their work
        self.on_loss: Callable[[ReplicaRunner], None] = lambda runner: None  # re-plan
        self._adopt(plan, runners)

    def _adopt(self, plan: Plan, runners: Sequence[ReplicaRunner]) -> None:
        self.plan, self.runners = plan, list(runners)
        self.router = Router(self.runners, plan.scheduler, on_role_change=self.role_changed)
        for runner in self.runners:
            runner.on_lost = self._runner_lost
            runner.metrics.set_role(runner.label, runner.role.value)

    def role_changed(self, runner: ReplicaRunner, before: Role, why: str) -> None:
        """`runner` changed role (a switch, a borrow or a return): log it, count it in
        `/metrics`, and note it for the dashboard."""
        devices = ",".join(runner.replica.devices)
        text = f"replica {runner.label} (devices {devices}): {before.value} -> {runner.role.value} ({why})"
        log.info("%s", text)
        runner.metrics.set_role(runner.label, runner.role.value, before.value)
        self.record_event(EventKind.ROLE_SWITCH, text)

    @property
    def everyone(self) -> list[ReplicaRunner]:
        return self.runners + self.retiring

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    # ---- losses ----------------------------------------------------------------------------
    def lost(self, error: BaseException, suspects: Sequence[ReplicaRunner]) -> ReplicaLost:
        """Mark the replica owning the dead actor lost (the suspects if Ray does not name it)."""
        actor_id = lost_actor_id(error)
        owners = [r for r in self.everyone if actor_id is not None and r.owns_actor(actor_id)]
        reason = f"stage actor died: {type(error).__name__}"
        for runner in owners or suspects:
            runner.mark_lost(reason)
        return ReplicaLost((owners or list(suspects))[0].label, reason)

    def _runner_lost(self, runner: ReplicaRunner, held: int) -> None:
        if runner not in self.everyone:
            return  # retired: taken out on purpose (see `plan_switch`)
        devices = ",".join(runner.replica.devices)
        text = (
            f"replica {runner.label} (devices {devices}) lost: {runner.lost}; "
            f"{held} requests there migrate or fail"
        )
        log.warning("%s", text)
        self.record_event(EventKind.DEVICE_LOST, text)
        if runner in self.runners:
            self.on_loss(runner)

    # ---- plan switch -----------------------------------------------------------------------
    def switch(self, plan: Plan, runners: Sequence[ReplicaRunner]) -> list[ReplicaRunner]:
        """Route new requests to `runners` (started) from now on; returns the old replicas, which
        retire (they finish what they hold, see `retired`)."""
        old = self.runners
        self.retiring.extend(old)
        self.generation += 1
        self._adopt(plan, runners)
        return old

    def retired(self, old: Sequence[ReplicaRunner]) -> None:
        """Forget retired replicas (before stopping them: their end is no loss)."""
        self.retiring = [r for r in self.retiring if r not in old]

    # ---- views -----------------------------------------------------------------------------
    def devices_in_use(self) -> list[str]:
        return plan_devices(self.plan)

    def lost_replicas(self) -> list[dict[str, Any]]:
        """The current plan's replicas out of service, for `/health`."""
        return [
            {"replica": r.replica.id, "devices": [s.device for s in r.replica.stages], "reason": r.lost}
            for r in self.runners
            if not r.alive
        ]

    def queue_lengths(self) -> dict[str, int]:
        return {
            "prefill": sum(r.prefill_waiting for r in self.runners),
            "decode": sum(r.decode_waiting for r in self.runners),
            "active": sum(r.decode_active for r in self.runners),
        }

    async def stage_stats(self) -> list[dict[str, Any]]:
        """Live figures from every stage actor of the current plan, one row per (replica, device);
        a dead actor found on the way marks its replica lost."""
        rows = []
        for runner in self.runners:
            if not runner.alive:
                continue
            try:
                stats = await asyncio.gather(*(a.stats.remote() for a in runner.actors))
            except Exception as e:
                if not is_actor_loss(e):
                    raise
                self.lost(e, [runner])
                continue
            for stage, s in zip(runner.replica.stages, stats, strict=True):
                rows.append(
                    {"replica": runner.replica.id, "label": runner.label, "device": stage.device, **s}
                )
        return rows

    # ---- shutdown --------------------------------------------------------------------------
    async def stop(self) -> None:
        for runner in self.everyone:
            await runner.stop()

    def kill_actors(self) -> None:
        import ray

        for runner in self.everyone:
            for actor in runner.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)

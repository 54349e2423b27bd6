"""Re-planning a served model on the devices that remain (or come back) after a device loss.

A plan made by a planner embeds the cluster, model spec, workload shape and planner parameters
it was made for; re-planning asks the same planner the same question on that cluster minus the
devices to leave out. Hand-written plans embed none of it, so they cannot be re-planned
(`Plan.can_replan`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system
from e2llm.plan.types import Plan
from e2llm.runtime.plans import runnable_plan
from e2llm.specs.device import Cluster


def replanned(
    plan: Plan,
    cluster: Cluster | None,
    leave_out: Collection[str],
    advertised: Collection[str] | None = None,
) -> Plan:
    """A runnable plan from `plan`'s system, model, workload shape and planner parameters on
    `cluster` (the first plan's: a device one re-plan left out can come back in the next)
    without the devices in `leave_out` and, when `advertised` is given, without the
    devices it lacks (no Ray node offers them). Raises `InputError` when no device is left or the
    planner finds no plan (its own errors pass through)."""
    if cluster is None or plan.model_spec is None or plan.workload is None or plan.params is None:
        raise InputError("replan", "the plan embeds no cluster, model spec, workload or planner parameters")
    keep = [
        d for d in cluster.devices if d.name not in leave_out and (advertised is None or d.name in advertised)
    ]
    if not keep:
        raise InputError("replan", "no device left to plan on", sorted(leave_out))
    names = {d.name for d in keep}
    links = {pair: link for pair, link in cluster.links.items() if pair <= names}
    remaining = replace(cluster, devices=tuple(keep), links=links)
    cost = build_cost_model(plan.model_spec, remaining)
    new = get_system(plan.system)(PlanRequest(cost, plan.workload, plan.params))
    return runnable_plan(new, plan.model_spec.n_layers, "replan")

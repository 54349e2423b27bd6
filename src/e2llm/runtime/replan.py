"""Re-planning a served model on the devices that remain (or come back) after a device loss.

A plan made by a planner embeds the cluster and the model spec it was made for; re-planning runs
the same planner on that cluster minus the devices to leave out, for the same workload shape that
`e2llm serve` plans with. Hand-written plans embed neither, so they cannot be re-planned.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from e2llm.errors import InputError
from e2llm.plan.systems import PlanRequest, WorkloadShape, get_system
from e2llm.plan.types import Plan
from e2llm.runtime.plans import runnable_plan

# Interactive chat on a small local cluster: short prompts and answers, a request a second.
SERVE_WORKLOAD = WorkloadShape(mean_input_tokens=256, mean_output_tokens=128, interval_s=1.0)


def can_replan(plan: Plan) -> bool:
    """Whether `plan` embeds what re-planning needs (its cluster and model spec)."""
    return bool(plan.cluster.get("devices")) and bool(plan.model_spec)


def replanned(
    plan: Plan,
    cluster: dict[str, Any],
    leave_out: Collection[str],
    advertised: Collection[str] | None = None,
) -> Plan:
    """A runnable plan from `plan`'s system and model on `cluster` (plain data, as plans embed
    it) without the devices in `leave_out` and, when `advertised` is given, without the devices
    it lacks (no Ray node offers them). Raises `InputError` when no device is left or the planner
    finds no plan (its own errors pass through)."""
    from e2llm.cost.build import build_cost_model
    from e2llm.specs.cluster_file import cluster_from_dict
    from e2llm.specs.model_spec import model_from_dict

    full = cluster_from_dict(cluster, "plan.cluster")
    keep = [
        d for d in full.devices if d.name not in leave_out and (advertised is None or d.name in advertised)
    ]
    if not keep:
        raise InputError("replan", "no device left to plan on", sorted(leave_out))
    names = {d.name for d in keep}
    links = {pair: link for pair, link in full.links.items() if pair <= names}
    remaining = replace(full, devices=tuple(keep), links=links)
    spec = model_from_dict(plan.model_spec, "plan.model_spec")
    request = PlanRequest(cost=build_cost_model(spec, remaining), workload=SERVE_WORKLOAD)
    new = get_system(plan.system)(request)
    return runnable_plan(new, spec.n_layers, "replan")

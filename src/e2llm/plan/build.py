"""Turning a searched grouping into the `Plan` (the contract the simulator and runtime read)."""

from __future__ import annotations

import dataclasses
import math

from e2llm.cost.model import CostModel
from e2llm.plan.bound import rate_bound
from e2llm.plan.evaluate import GroupEvaluator, planned_context
from e2llm.plan.request import PlanRequest
from e2llm.plan.search import Grouping, fits_nowhere
from e2llm.plan.types import Plan, PlannerStats, Replica, Role, Scheduler, Stage
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.units import GIB


def build_plan(system: str, req: PlanRequest, grouping: Grouping, seconds: float) -> Plan:
    cost, shape = req.cost, grouping.shape or req.workload
    ctx = planned_context(cost, shape)
    a = grouping.assignment
    replicas: list[Replica] = []
    unused = list(grouping.unused)
    idle = a.idle or (False,) * len(grouping.groups)
    for i, (group, ev) in enumerate(zip(grouping.groups, grouping.evals, strict=True)):
        if idle[i]:  # a pool without its partner serves nothing: its devices stay unused
            unused.extend(group)
            continue
        role = a.roles[i]
        if role is Role.MIXED:
            mixed = ev.mixed_at(a.concurrency[i])
            phase = mixed.phase
        else:
            phase = ev.phase(role is Role.PREFILL, a.concurrency[i])
        stages = []
        last = len(group) - 1
        for k, (name, (start, end)) in enumerate(zip(group, phase.partition.ranges, strict=True)):
            mem = cost.stage_memory_bytes(
                start, end, embedding=k == 0, lm_head=k == last, sequences=phase.concurrency, context=ctx
            )
            stages.append(Stage(name, start, end, embedding=k == 0, lm_head=k == last, memory_gb=mem / GIB))
        replica = Replica(
            id=len(replicas),
            role=role,
            stages=tuple(stages),
            concurrency=phase.concurrency,
            bottleneck_device=group[phase.partition.bottleneck_index],
        )
        if role is Role.PREFILL:
            replica = dataclasses.replace(
                replica,
                prefill_tok_s=shape.mean_input_tokens / phase.token_s,
                prefill_capacity_tok_s=phase.rate_tok_s,
            )
        elif role is Role.DECODER:
            replica = dataclasses.replace(
                replica, decode_tok_s_per_request=1.0 / phase.token_s, decode_capacity_tok_s=phase.rate_tok_s
            )
        else:  # MIXED: both phases on the decode split, time shared at its planned rate
            replica = dataclasses.replace(
                replica,
                prefill_tok_s=shape.mean_input_tokens / mixed.prefill_s,
                prefill_capacity_tok_s=shape.mean_input_tokens / mixed.prefill_bottleneck_s,
                decode_tok_s_per_request=(1.0 - mixed.rate_rps * mixed.prefill_bottleneck_s) / phase.token_s,
                decode_capacity_tok_s=phase.rate_tok_s,
            )
        replicas.append(replica)
    return Plan(
        system=system,
        model=cost.model.name,
        objective=a.objective,
        objective_kind=req.params.objective.kind,
        replicas=tuple(replicas),
        unused_devices=tuple(unused),
        planner=PlannerStats(
            evaluations=grouping.evaluations, seconds=seconds, generations=grouping.generations
        ),
        scheduler=Scheduler.JSQ,
        cluster=cost.cluster,
        model_spec=cost.model,
        workload=req.workload,
        params=req.params,
        rate_rps=a.rate_rps,
        bound_rps=plan_bound(req.cost, shape),
        latency_s=a.latency_s if math.isfinite(a.latency_s) else None,
    )


def plan_bound(cost: CostModel, shape: WorkloadShape) -> float:
    """The upper bound on any plan's rate for this cluster, model and workload shape (every role
    allowed); a cluster on which it is zero gets planning's error."""
    bound = rate_bound(cost, shape)
    if bound <= 0:
        raise fits_nowhere(GroupEvaluator(cost, shape))
    return bound

"""Turning a searched grouping into the `Plan` (the contract the simulator and runtime read)."""

from __future__ import annotations

from e2llm.plan.evaluate import planned_context
from e2llm.plan.request import PlanRequest
from e2llm.plan.search import Grouping
from e2llm.plan.types import Plan, PlannerStats, Replica, Role, Scheduler, Stage
from e2llm.specs.units import GIB


def build_plan(system: str, req: PlanRequest, grouping: Grouping, seconds: float) -> Plan:
    cost, shape = req.cost, req.workload
    ctx = planned_context(cost, shape)
    a = grouping.assignment
    replicas = []
    for i, (group, ev) in enumerate(zip(grouping.groups, grouping.evals, strict=True)):
        is_prefill = a.prefill[i]
        phase = ev.phase(is_prefill, a.concurrency[i])
        stages = []
        last = len(group) - 1
        for k, (name, (start, end)) in enumerate(zip(group, phase.partition.ranges, strict=True)):
            mem = cost.stage_memory_bytes(
                start, end, embedding=k == 0, lm_head=k == last, sequences=phase.concurrency, context=ctx
            )
            stages.append(Stage(name, start, end, embedding=k == 0, lm_head=k == last, memory_gb=mem / GIB))
        replicas.append(
            Replica(
                id=i,
                role=Role.PREFILL if is_prefill else Role.DECODER,
                stages=tuple(stages),
                concurrency=phase.concurrency,
                prefill_tok_s=shape.mean_input_tokens / phase.token_s if is_prefill else None,
                decode_tok_s_per_request=None if is_prefill else 1.0 / phase.token_s,
                bottleneck_device=group[phase.partition.bottleneck_index],
                prefill_capacity_tok_s=phase.rate_tok_s if is_prefill else None,
                decode_capacity_tok_s=None if is_prefill else phase.rate_tok_s,
            )
        )
    return Plan(
        system=system,
        model=cost.model.name,
        objective=a.objective,
        objective_kind=req.params.objective.kind,
        replicas=tuple(replicas),
        unused_devices=grouping.unused,
        planner=PlannerStats(
            evaluations=grouping.evaluations, seconds=seconds, generations=grouping.generations
        ),
        scheduler=Scheduler.JSQ,
        cluster=cost.cluster,
        model_spec=cost.model,
        workload=shape,
        params=req.params,
    )

"""The baseline systems e2llm is compared with: "splitwise", "pipeline" and "colocated".

All use e2llm's cost model, DP layer split (`GroupEvaluator`, which runs `partition_layers`) and
plan format, so a comparison isolates the placement policy. ("memory-proportional" lives in
memory_proportional.py.) None of them is weakened: where a choice was open, each gets the
stronger option, and every choice is stated in its docstring.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from e2llm.errors import InputError
from e2llm.plan.build import build_plan
from e2llm.plan.e2llm_planner import plan_e2llm
from e2llm.plan.evaluate import GroupEval, GroupEvaluator, PhaseEval
from e2llm.plan.request import PlanRequest
from e2llm.plan.role_scoring import RoleAssignment, objective_value, predicted_latency, sort_key
from e2llm.plan.search import Grouping
from e2llm.plan.types import Plan, Replica, Role, Scheduler


def plan_splitwise(req: PlanRequest) -> Plan:
    """Splitwise (Patel et al., ISCA 2024) adapted to the edge, as the E2LLM paper adapts it.

    Full-model groups are formed greedily by memory (devices by decreasing memory, a group closes
    as soon as it holds the model and one request's KV; the devices left over either stay unused
    or join the last group, whichever the analytic model rates better), and each group's layers
    are split by e2llm's own DP. As in Splitwise, the most compute-capable replicas (highest
    prefill throughput) form the prompt pool and the rest the token pool, and the pool sizes come
    from an offline sweep of every split point scored with the same analytic capacity model and
    objective e2llm uses (Splitwise provisions by sweeping pool sizes at the target load). Token
    machines batch as many requests as memory holds, up to 16 (the range the method profiles),
    with no per-request speed floor: Splitwise batches by memory and has no such floor (the
    paper's adapted Splitwise decodes at 12.1 tok/s, under E2LLM's 15), which only adds decode
    capacity. At run time the plan asks for Splitwise's scheduler (`scheduler="splitwise"`):
    prompts to the prompt machine with the fewest pending prompt tokens, the token phase to the
    token machine with the least KV memory in use, the KV shipped over the real links after the
    prompt phase (each layer from the device that computed it to the one that will use it).
    """
    start = time.perf_counter()
    shape = dataclasses.replace(req.workload, min_decode_tok_s=0.0)
    ev = GroupEvaluator(req.cost, shape)
    names = sorted(req.cost.cluster.names, key=lambda n: (-ev.free_bytes(n), n))
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    for n in names:
        current.append(n)
        got = ev.evaluate(current)
        if got is not None and got.decode:
            groups.append(tuple(current))
            current = []
    candidates = [(groups, tuple(current))]
    if current and groups:
        candidates.append(([*groups[:-1], groups[-1] + tuple(current)], ()))
    best: tuple[tuple[float, float], Grouping] | None = None
    for cand_groups, unused in candidates:
        evals = [e for g in cand_groups if (e := ev.evaluate(g)) is not None and e.decode]
        if len(cand_groups) < 2 or len(evals) < len(cand_groups):
            continue
        found = _best_pools(req, evals)
        if found is None:
            continue
        order, assignment = found
        grouping = Grouping(
            tuple(cand_groups[i] for i in order),
            tuple(evals[i] for i in order),
            assignment,
            unused,
            evaluations=len(cand_groups),
            generations=0,
        )
        if best is None or assignment.key < best[0]:
            best = (assignment.key, grouping)
    if best is None:
        raise InputError(
            f"model {req.cost.model.name}",
            "splitwise needs at least two full-model groups of the devices (one per pool)",
            len(groups),
        )
    plan = build_plan(
        "splitwise", dataclasses.replace(req, workload=shape), best[1], time.perf_counter() - start
    )
    # The plan was made for the workload as asked (the speed floor is off only inside).
    return dataclasses.replace(plan, scheduler=Scheduler.SPLITWISE, workload=req.workload)


def _best_pools(req: PlanRequest, evals: Sequence[GroupEval]) -> tuple[list[int], RoleAssignment] | None:
    """Replicas in prompt-first order (most compute-capable first) and the best split point."""
    shape = dataclasses.replace(req.workload, min_decode_tok_s=0.0)
    rates = [e.rates(shape) for e in evals]
    choice = {i: r.best_decode() for i, r in enumerate(rates)}
    conc = {i: c.concurrency for i, c in choice.items() if c is not None}
    order = sorted(range(len(evals)), key=lambda i: (-evals[i].prefill.rate_tok_s, i))
    best: RoleAssignment | None = None
    for k in range(1, len(order)):
        prompt, token = order[:k], order[k:]
        decode = [c for i in token if (c := choice[i]) is not None]
        if len(decode) < len(token):
            continue
        p = sum(rates[i].prefill_rps for i in prompt)
        d = sum(c.rate_rps for c in decode)
        lat = predicted_latency(
            p,
            sum(rates[i].prefill_rps * rates[i].prefill_latency_s for i in prompt),
            d,
            sum(c.rate_rps * c.latency_s for c in decode),
            req.workload.interval_s,
        )
        a = RoleAssignment(
            prefill=tuple(i in prompt for i in order),
            concurrency=tuple(1 if i in prompt else conc[i] for i in order),
            objective=objective_value(req.params.objective, p, d, req.workload.interval_s),
            latency_s=lat,
            prefill_rps=p,
            decode_rps=d,
        )
        if best is None or a.key < best.key:
            best = a
    return None if best is None else (order, best)


def plan_pipeline(req: PlanRequest) -> Plan:
    """One pipeline doing both phases (what exo and llama.cpp RPC deploy): a single COLOCATED
    replica over all devices, or over the fewest devices that hold the model (taken by
    decreasing memory), whichever the analytic model rates better; e2llm's DP splits its layers.
    Its decode batch is the highest-throughput concurrency that keeps the workload's per-request
    speed floor (the largest memory allows if none does), with prefill prioritised over decode as
    in vLLM and the llama.cpp server. With one replica there is nothing to route.
    """
    start = time.perf_counter()
    ev = GroupEvaluator(req.cost, req.workload)
    names = sorted(req.cost.cluster.names, key=lambda n: (-ev.free_bytes(n), n))
    candidates = [tuple(names)]
    for k in range(1, len(names)):
        got = ev.evaluate(names[:k])
        if got is not None and got.decode:
            candidates.append(tuple(names[:k]))
            break
    best: Plan | None = None
    for group in candidates:
        try:
            plan = _colocated_plan("pipeline", req, [group], tuple(n for n in names if n not in group), start)
        except InputError:
            continue
        if best is None or sort_key(plan.objective, 0.0) < sort_key(best.objective, 0.0):
            best = plan
    if best is None:
        raise InputError(f"model {req.cost.model.name}", "does not fit on all the devices together")
    return best


def plan_colocated(req: PlanRequest) -> Plan:
    """e2llm without disaggregation: exactly the replicas (device groups, pipeline order) that
    the e2llm planner chooses, but each replica does both phases (COLOCATED) with its layers split
    by the DP for decoding, at the highest-throughput concurrency that keeps the speed floor
    (the largest memory allows if none does), prefill prioritised over decode (vLLM's default).
    Requests go to the replica with the fewest outstanding requests per decode slot (JSQ). It
    isolates what PD disaggregation and role assignment are worth on the same hardware.
    """
    start = time.perf_counter()
    e2llm = plan_e2llm(req)
    groups = [r.devices for r in e2llm.replicas]
    return _colocated_plan("colocated", req, groups, e2llm.unused_devices, start)


def _colocated_plan(
    name: str, req: PlanRequest, groups: Sequence[tuple[str, ...]], unused: tuple[str, ...], start: float
) -> Plan:
    """COLOCATED replicas on `groups`; the objective uses each replica's combined capacity:
    one request costs it the prompt's bottleneck-stage time (prompts pipeline among themselves
    while decode pauses) plus its share of the decode batch's time."""
    cost, shape = req.cost, req.workload
    with_floor = GroupEvaluator(cost, shape)
    no_floor = GroupEvaluator(cost, dataclasses.replace(shape, min_decode_tok_s=0.0))
    evals: list[GroupEval] = []
    phases: list[PhaseEval] = []
    for g in groups:
        e = with_floor.evaluate(g)
        if e is None or not e.decode:
            e = no_floor.evaluate(g)
        if e is None or not e.decode:
            raise InputError(f"model {cost.model.name}", "a replica cannot hold the model", list(g))
        evals.append(e)
        phases.append(max(e.decode, key=lambda p: (p.rate_tok_s, -p.token_s)))
    tokens = max(1, round(shape.mean_input_tokens))
    prefill = [_prefill_on_split(req, g, ph, tokens) for g, ph in zip(groups, phases, strict=True)]
    rps = [
        1.0 / (bottleneck + shape.mean_output_tokens * ph.token_s / ph.concurrency)
        for (bottleneck, _), ph in zip(prefill, phases, strict=True)
    ]
    total = sum(rps)
    per_request = [
        lat_p + shape.mean_output_tokens * ph.token_s for (_, lat_p), ph in zip(prefill, phases, strict=True)
    ]
    lat = sum(r * x for r, x in zip(rps, per_request, strict=True)) / total
    a = RoleAssignment(
        prefill=(False,) * len(groups),
        concurrency=tuple(ph.concurrency for ph in phases),
        objective=objective_value(req.params.objective, total, total, shape.interval_s),
        latency_s=lat,
        prefill_rps=total,
        decode_rps=total,
    )
    grouping = Grouping(tuple(groups), tuple(evals), a, unused, evaluations=len(groups), generations=0)
    plan = build_plan(name, req, grouping, time.perf_counter() - start)
    replicas = tuple(
        _as_colocated(r, tokens, b, lat_p, shape.mean_input_tokens)
        for r, (b, lat_p) in zip(plan.replicas, prefill, strict=True)
    )
    return dataclasses.replace(plan, replicas=replicas)


def _prefill_on_split(
    req: PlanRequest, group: Sequence[str], phase: PhaseEval, tokens: int
) -> tuple[float, float]:
    """(bottleneck stage, latency) of one prompt on the decode layer split."""
    cost = req.cost
    last = len(group) - 1
    times = []
    lat = 0.0
    for k, (dev, (a, b)) in enumerate(zip(group, phase.partition.ranges, strict=True)):
        t = cost.stage_prefill_s(dev, b - a, tokens, embedding=k == 0, lm_head=k == last)
        times.append(t)
        lat += t + (cost.hop_s(group[k - 1], dev, tokens) if k else 0.0)
    return max(times), lat


def _as_colocated(
    r: Replica, tokens: int, bottleneck_s: float, latency_s: float, mean_input: float
) -> Replica:
    return dataclasses.replace(
        r,
        role=Role.COLOCATED,
        prefill_tok_s=mean_input / latency_s,
        prefill_capacity_tok_s=tokens / bottleneck_s,
    )

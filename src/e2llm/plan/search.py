"""The grouping search shared by the e2llm planner and the memory-proportional baseline.

Given a layer splitter (the DP, or the proportional split), find the device groups, roles and
decode concurrencies that minimise the objective: by the GA (default) or by the exhaustive
oracle (`PlannerParams.exhaustive`, clusters of at most 7 devices).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypeVar

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.errors import InputError
from e2llm.plan.evaluate import GroupEval, GroupEvaluator, Splitter
from e2llm.plan.exhaustive import MAX_DEVICES, Rates, search_exhaustive
from e2llm.plan.ga import INFEASIBLE, GAParams, Individual, Key, evolve
from e2llm.plan.request import PlanRequest
from e2llm.plan.roles import RoleAssignment, assign_roles, assign_roles_exhaustive
from e2llm.plan.sizer import MemorySizer
from e2llm.specs.units import GIB

_T = TypeVar("_T")


@dataclass(frozen=True)
class Grouping:
    """A searched deployment: replicas (device names in pipeline order) with roles."""

    groups: tuple[tuple[str, ...], ...]
    evals: tuple[GroupEval, ...]
    assignment: RoleAssignment
    unused: tuple[str, ...]
    evaluations: int  # groupings scored (GA fitness calls not answered by the cache; or arrangements)
    generations: int  # GA generations run (0 for the exhaustive search)


def search_grouping(req: PlanRequest, split: Splitter, params: GAParams | None = None) -> Grouping:
    """Raises InputError when the model fits in no grouping, or no grouping has a decoder."""
    cost, shape = req.cost, req.workload
    ev = GroupEvaluator(cost, shape, split)
    names = cost.cluster.names
    free = tuple(ev.free_bytes(n) for n in names)
    need = ev.model_bytes - RUNTIME_OVERHEAD_BYTES
    total = sum(max(f, 0.0) for f in free)
    if total < need:
        raise InputError(
            f"model {cost.model.name}",
            f"fits in no grouping of the devices: needs {need / GIB:.1f} GiB, "
            f"the devices hold {total / GIB:.1f} GiB in total",
        )
    interval = shape.interval_s
    if req.params.exhaustive:
        if len(names) > MAX_DEVICES:
            raise InputError("exhaustive", f"refuses clusters above {MAX_DEVICES} devices", len(names))
        memo: dict[tuple[int, ...], Rates | None] = {}

        def rates_of(g: tuple[int, ...]) -> Rates | None:
            if g not in memo:
                memo[g] = _rates_tuple(ev, [names[i] for i in g])
            return memo[g]

        found = search_exhaustive(
            len(names),
            lambda g: ev.may_fit([names[i] for i in g]),
            rates_of,
            interval,
            req.params.objective,
        )
        if found is None:
            raise _no_plan(req, need)
        groups = tuple(tuple(names[i] for i in g) for g in found.groups)
        evals = tuple(_must(ev.evaluate(g)) for g in groups)
        rates = [_must(ev.rates(g)) for g in groups]
        assignment = _must(
            assign_roles_exhaustive(rates, interval, req.params.objective, every_concurrency=False)
        )
        used = {n for g in groups for n in g}
        return Grouping(
            groups, evals, assignment, tuple(n for n in names if n not in used), found.arrangements, 0
        )

    cache: dict[tuple[tuple[int, ...], ...], Key] = {}

    def fitness(ind: Individual) -> Key:
        canon = ind.canonical
        if canon not in cache:
            rates = []
            for g in canon:
                r = ev.rates([names[i] for i in g])
                if r is None:
                    cache[canon] = INFEASIBLE
                    return INFEASIBLE
                rates.append(r)
            a = assign_roles(rates, interval, req.params.objective)
            cache[canon] = a.key if a else INFEASIBLE
        return cache[canon]

    sizer = MemorySizer(free, need)
    by_memory = sorted(range(len(names)), key=lambda i: (-free[i], i))
    by_speed = sorted(range(len(names)), key=lambda i: (-cost.cluster.devices[i].mem_bandwidth_gbs, i))
    seeds = [Individual(tuple(p), sizer.minimal(p)) for p in (by_memory, by_speed)]
    result = evolve(
        len(names),
        fitness,
        sizer,
        random.Random(req.params.seed),
        params or GAParams(),
        seeds=seeds,
        progress=req.progress,
    )
    if result.key == INFEASIBLE:
        raise _no_plan(req, need)
    groups = tuple(tuple(names[i] for i in g) for g in result.best.groups)
    evals = tuple(_must(ev.evaluate(g)) for g in groups)
    assignment = _must(assign_roles([_must(ev.rates(g)) for g in groups], interval, req.params.objective))
    unused = tuple(names[i] for i in result.best.unused)
    return Grouping(groups, evals, assignment, unused, len(cache), result.generations)


def _rates_tuple(ev: GroupEvaluator, group: list[str]) -> Rates | None:
    r = ev.rates(group)
    if r is None:
        return None
    best = r.best_decode()
    return (
        r.prefill_rps,
        r.prefill_latency_s,
        best.rate_rps if best else 0.0,
        best.latency_s if best else 0.0,
        best is not None,
    )


def _must(x: _T | None) -> _T:
    assert x is not None, "a grouping the search scored as feasible must evaluate again"
    return x


def _no_plan(req: PlanRequest, need: float) -> InputError:
    return InputError(
        f"model {req.cost.model.name}",
        "no grouping of the devices forms both a PREFILL and a DECODER replica "
        f"({need / GIB:.1f} GiB each) with a decoder keeping >= {req.workload.min_decode_tok_s:g} tok/s "
        "per request; try --system pipeline, or a lower min_decode_tok_s",
    )

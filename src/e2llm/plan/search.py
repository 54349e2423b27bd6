"""The grouping search shared by the e2llm planner and the memory-proportional baseline.

Given a layer splitter (the DP, or the proportional split), find the device groups, roles and
decode concurrencies that minimise the objective: by the GA (default) or by the exhaustive
oracle (`PlannerParams.exhaustive`, clusters of at most 7 devices). Both score a set of groups the
same way (`RoleScorer`): each group's rates in every role, the KV hand-off limits between them
(`kv_links`), and the role assignment (`roles`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.errors import InputError
from e2llm.plan.evaluate import GroupEval, GroupEvaluator, Splitter
from e2llm.plan.exhaustive import MAX_DEVICES, Arrangement, search_exhaustive
from e2llm.plan.ga import INFEASIBLE, GAParams, Individual, Key, evolve
from e2llm.plan.kv_links import Handoff, KvLinks, stages_of
from e2llm.plan.request import PlanRequest
from e2llm.plan.role_scoring import KvSource, ReplicaRates, RoleAssignment
from e2llm.plan.roles import assign_roles
from e2llm.plan.sizer import MemorySizer
from e2llm.plan.workload_shape import WorkloadShape
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
    shape: WorkloadShape | None = None  # the shape the groups were scored on (None: the request's)


@dataclass(frozen=True, slots=True)
class _Replica:
    rates: ReplicaRates
    handoff: Handoff  # its stages as PREFILL and as DECODER (at its best concurrency)


class RoleScorer:
    """Scores sets of groups (device names in pipeline order): rates, hand-off limits, roles."""

    def __init__(
        self, ev: GroupEvaluator, objective: str, *, mixed: bool = True, exact_rows: int | None = None
    ):
        self.ev = ev
        self.objective = objective
        self.mixed = mixed
        self.interval_s = ev.shape.interval_s
        self.links = KvLinks(ev.cost, ev.shape.mean_input_tokens)
        self._exact = {} if exact_rows is None else {"exact_rows": exact_rows}
        self._replicas: dict[tuple[str, ...], _Replica | None] = {}

    def replica(self, group: Sequence[str]) -> _Replica | None:
        names = tuple(group)
        if names not in self._replicas:
            ev = self.ev.evaluate(names)
            rates = self.ev.rates(names)
            if ev is None or rates is None:
                self._replicas[names] = None
            else:
                if not self.mixed:
                    rates = dataclasses.replace(rates, mixed=None)
                best = rates.best_decode()
                dec = ev.phase(False, best.concurrency).partition.ranges if best else None
                handoff = Handoff(
                    len(self._replicas),
                    stages_of(names, ev.prefill.partition.ranges),
                    stages_of(names, dec) if dec is not None else None,
                    rates.prefill_rps,
                )
                self._replicas[names] = _Replica(rates, handoff)
        return self._replicas[names]

    def replicas(self, groups: Sequence[Sequence[str]]) -> list[_Replica] | None:
        out = []
        for g in groups:
            r = self.replica(g)
            if r is None:
                return None
            out.append(r)
        return out

    def kv(self, reps: Sequence[_Replica]) -> np.ndarray | None:
        """The hand-off limits between the replicas (None: none can bind)."""
        return self.links.matrix([r.handoff for r in reps])

    def kv_source(self, reps: Sequence[_Replica]) -> KvSource:
        """The same, computed for the PREFILL rows and DECODER columns the role search asks."""
        handoffs = [r.handoff for r in reps]
        return lambda rows, cols: self.links.matrix(handoffs, rows, cols)

    def assign(self, groups: Sequence[Sequence[str]]) -> RoleAssignment | None:
        reps = self.replicas(groups)
        if reps is None:
            return None
        rates = [r.rates for r in reps]
        return assign_roles(rates, self.interval_s, self.objective, self.kv_source(reps), **self._exact)


def search_grouping(req: PlanRequest, split: Splitter, params: GAParams | None = None) -> Grouping:
    """Raises InputError when the model fits in no grouping, or no grouping has a decoder."""
    cost, shape = req.cost, req.workload.robust()  # scored on longer-than-average lengths
    ev = GroupEvaluator(cost, shape, split)
    names = cost.cluster.names
    free = tuple(ev.free_bytes(n) for n in names)
    need = ev.model_bytes - RUNTIME_OVERHEAD_BYTES
    if sum(max(f, 0.0) for f in free) < need:
        raise fits_nowhere(ev)
    if req.params.exhaustive:
        if len(names) > MAX_DEVICES:
            raise InputError("exhaustive", f"refuses clusters above {MAX_DEVICES} devices", len(names))
        return _exhaustive(req, ev, need)

    scorer = RoleScorer(ev, req.params.objective, mixed=req.params.mixed)
    cache: dict[tuple[tuple[int, ...], ...], Key] = {}

    def fitness(ind: Individual) -> Key:
        canon = ind.canonical
        if canon not in cache:
            a = scorer.assign([[names[i] for i in g] for g in canon])
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
        params or dataclasses.replace(GAParams(), generations=req.params.budget),
        seeds=seeds,
        progress=req.progress,
    )
    if result.key == INFEASIBLE:
        raise _no_plan(req, need)
    groups = tuple(tuple(names[i] for i in g) for g in result.best.groups)
    unused = tuple(names[i] for i in result.best.unused)
    return _grouping(scorer, groups, unused, len(cache), result.generations)


def _exhaustive(req: PlanRequest, ev: GroupEvaluator, need: float) -> Grouping:
    names = req.cost.cluster.names
    objective = req.params.objective
    scorer = RoleScorer(ev, objective, mixed=req.params.mixed, exact_rows=1 << 62)  # always enumerate

    def replicas_of(arrangement: Arrangement) -> tuple[list[ReplicaRates], np.ndarray | None] | None:
        reps = scorer.replicas([[names[i] for i in g] for g in arrangement])
        return None if reps is None else ([r.rates for r in reps], scorer.kv(reps))

    def fits(group: tuple[int, ...]) -> bool:
        return ev.may_fit([names[i] for i in group])

    found = search_exhaustive(len(names), fits, replicas_of, scorer.interval_s, objective)
    if found is None:
        raise _no_plan(req, need)
    groups = tuple(tuple(names[i] for i in g) for g in found.groups)
    used = {n for g in groups for n in g}
    return _grouping(scorer, groups, tuple(n for n in names if n not in used), found.arrangements, 0)


def _grouping(
    scorer: RoleScorer,
    groups: tuple[tuple[str, ...], ...],
    unused: tuple[str, ...],
    evaluations: int,
    generations: int,
) -> Grouping:
    evals = tuple(_must(scorer.ev.evaluate(g)) for g in groups)
    assignment = _must(scorer.assign(groups))
    return Grouping(groups, evals, assignment, unused, evaluations, generations, scorer.ev.shape)


def fits_nowhere(ev: GroupEvaluator) -> InputError:
    """The error of a cluster whose devices together cannot hold one copy of the model."""
    need = ev.model_bytes - RUNTIME_OVERHEAD_BYTES
    total = sum(max(ev.free_bytes(n), 0.0) for n in ev.cost.cluster.names)
    return InputError(
        f"model {ev.cost.model.name}",
        f"fits in no grouping of the devices: needs {need / GIB:.1f} GiB, "
        f"the devices hold {total / GIB:.1f} GiB in total",
    )


def _must(x: _T | None) -> _T:
    assert x is not None, "a grouping the search scored as feasible must evaluate again"
    return x


def _no_plan(req: PlanRequest, need: float) -> InputError:
    return InputError(
        f"model {req.cost.model.name}",
        "no grouping of the devices forms both a PREFILL and a DECODER replica"
        + (", or a MIXED one," if req.params.mixed else "")
        + f" ({need / GIB:.1f} GiB each) with a decoder keeping >= {req.workload.min_decode_tok_s:g} tok/s "
        "per request; try --system pipeline, or a lower min_decode_tok_s",
    )

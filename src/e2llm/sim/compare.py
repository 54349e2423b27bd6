"""Plan with a system and simulate a workload at one or several loads: what `e2llm simulate`,
`e2llm compare` and the experiments share.

Every system at a given load sees the very same requests (same workload, same seed), and each
system is re-planned for each load, because every planner (e2llm's objective, Splitwise's pool
sizing) provisions for the arrival rate it is told.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2llm.cost.model import CostModel
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system
from e2llm.plan.types import Objective, Plan, PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.policy.settings import PolicySettings
from e2llm.progress import Progress
from e2llm.sim.execution import IDEAL, Execution
from e2llm.sim.metrics import summarize
from e2llm.sim.simulator import ServingContext, SimResult, simulate
from e2llm.sim.validate import check_plan, check_serves
from e2llm.specs.workload import Request, Workload, generate_requests, with_load


@dataclass(frozen=True)
class Load:
    """One load point: a mean inter-arrival time or a rate (at most one set; neither = as given)."""

    interval_s: float | None = None
    rate_per_s: float | None = None

    @property
    def label(self) -> str:
        if self.interval_s is not None:
            return f"interval {self.interval_s:g} s"
        if self.rate_per_s is not None:
            return f"rate {self.rate_per_s:g}/s"
        return "as given"

    def apply(self, workload: Workload) -> Workload:
        return with_load(workload, interval_s=self.interval_s, rate_per_s=self.rate_per_s)


@dataclass(frozen=True)
class Run:
    """One plan simulated on one load."""

    system: str
    load: Load
    plan: Plan
    requests: tuple[Request, ...]
    result: SimResult
    metrics: dict[str, Any]


def run_plan(
    plan: Plan,
    cost: CostModel,
    workload: Workload,
    load: Load,
    seed: int | None = None,
    where: str = "plan",
    settings: PolicySettings | None = None,
    execution: Execution = IDEAL,
) -> Run:
    """Simulate `plan` on `workload` at `load`, requests drawn with `seed` (else the workload's),
    served with the policy `settings` (default: the plan's roles, fixed) by an engine that runs it as
    `execution` says (default: the ideal pipelined engine).
    Raises InputError for a plan that cannot run."""
    settings = settings or PolicySettings()
    check_plan(plan, cost, where, settings.chunk_tokens)
    w = load.apply(workload)
    requests = generate_requests(w, seed)
    check_serves(plan, cost, requests, where)
    ctx = ServingContext(settings, min_decode_tok_s=w.min_decode_tok_s, execution=execution)
    result = simulate(plan, cost, requests, ctx)
    metrics = summarize(result.records, w.min_decode_tok_s, result.role_switches)
    return Run(plan.system, load, plan, tuple(requests), result, metrics)


def plan_system(
    name: str,
    cost: CostModel,
    workload: Workload,
    load: Load,
    seed: int | None = None,
    objective: Objective = Objective.BOTTLENECK,
    mixed: bool = True,
) -> Plan:
    """Plan with system `name` for `workload` at `load` (planner seed: `seed`, else the workload's;
    `mixed`: may e2llm's planner assign MIXED replicas)."""
    w = load.apply(workload)
    params = PlannerParams(seed=w.seed if seed is None else seed, objective=objective, mixed=mixed)
    return get_system(name)(PlanRequest(cost, WorkloadShape.of(w), params))


def compare(
    systems: Sequence[str],
    cost: CostModel,
    workload: Workload,
    loads: Sequence[Load],
    seed: int | None = None,
    progress: Progress | None = None,
    objective: Objective = Objective.BOTTLENECK,
    settings: PolicySettings | None = None,
    mixed: bool = True,
) -> list[Run]:
    """Every system at every load (planned for `objective`, served with `settings`); runs in
    (load, system) order."""
    runs: list[Run] = []
    total = len(loads) * len(systems)
    for load in loads:
        for name in systems:
            if progress:
                progress(len(runs), total, f"{name} @ {load.label}")
            plan = plan_system(name, cost, workload, load, seed, objective, mixed)
            runs.append(run_plan(plan, cost, workload, load, seed, where=f"{name} plan", settings=settings))
    if progress:
        progress(total, total)
    return runs

"""What every planning system is asked, and the signature of a system.

A system is a pure function `PlanRequest -> Plan`: it never reads files or prints, and it
raises `InputError` when the model fits nowhere on the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from e2llm.cost.model import CostModel
from e2llm.plan.types import Plan, PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.progress import Progress


@dataclass(frozen=True)
class PlanRequest:
    cost: CostModel  # the model on the cluster
    workload: WorkloadShape
    params: PlannerParams = field(default_factory=PlannerParams)
    progress: Progress | None = None  # (GA generations done, maximum) for progress bars


Planner = Callable[[PlanRequest], Plan]

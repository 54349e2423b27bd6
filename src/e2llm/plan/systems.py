"""The one registry of planning systems: e2llm and every baseline.

`e2llm plan --system`, `e2llm compare --systems` and the experiments all read from here.
A system is a pure function `PlanRequest -> Plan`; it never reads files or prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from e2llm.cost.model import CostModel
from e2llm.errors import InputError
from e2llm.plan.types import Plan


@dataclass(frozen=True)
class WorkloadShape:
    """What a planner knows of the workload: averages, as in the method."""

    mean_input_tokens: float
    mean_output_tokens: float
    interval_s: float  # mean inter-arrival time
    min_decode_tok_s: float = 15.0


@dataclass(frozen=True)
class PlanRequest:
    cost: CostModel
    workload: WorkloadShape
    seed: int = 1
    objective: str = "bottleneck"  # "bottleneck" (the method's) or "max_rate"
    exhaustive: bool = False  # use the exhaustive oracle instead of the GA (small clusters)
    progress: Callable[[int, int], None] | None = None  # (done, total) for progress bars


Planner = Callable[[PlanRequest], Plan]

_SYSTEMS: dict[str, Planner] = {}


def system(name: str) -> Callable[[Planner], Planner]:
    """Register a planner under `name`."""

    def register(fn: Planner) -> Planner:
        _SYSTEMS[name] = fn
        return fn

    return register


def get_system(name: str) -> Planner:
    _load_all()
    if name not in _SYSTEMS:
        raise InputError("--system", f"unknown system; choose from {', '.join(system_names())}", name)
    return _SYSTEMS[name]


def system_names() -> list[str]:
    _load_all()
    return sorted(_SYSTEMS)


def _load_all() -> None:
    """Import the modules that register systems (kept lazy to avoid import cycles)."""
    from e2llm.plan import baselines, e2llm_planner, memory_proportional  # noqa: F401

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
from e2llm.specs.workload import Workload, generate_requests


@dataclass(frozen=True)
class WorkloadShape:
    """What a planner knows of the workload: averages, as in the method."""

    mean_input_tokens: float
    mean_output_tokens: float
    interval_s: float  # mean inter-arrival time
    min_decode_tok_s: float = 15.0
    kv_context_tokens: float = 0.0  # KV tokens budgeted per decoding sequence; 0: mean in + out

    @classmethod
    def of(cls, workload: Workload) -> WorkloadShape:
        """The planner's view of `workload`: its means, and the 90th percentile of a request's
        final context as the KV budget per sequence. Budgeting KV at the mean context would plan
        a concurrency that every longer-than-average request makes the decoder fall short of."""
        contexts = sorted(r.input_tokens + r.output_tokens for r in generate_requests(workload))
        return cls(
            mean_input_tokens=workload.mean_input_tokens,
            mean_output_tokens=workload.mean_output_tokens,
            interval_s=workload.mean_interval_s,
            min_decode_tok_s=workload.min_decode_tok_s,
            kv_context_tokens=float(contexts[(9 * (len(contexts) - 1)) // 10]) if contexts else 0.0,
        )


@dataclass(frozen=True)
class PlanRequest:
    cost: CostModel
    workload: WorkloadShape
    seed: int = 1
    objective: str = "bottleneck"  # "bottleneck" (the method's) or "max_rate"
    exhaustive: bool = False  # use the exhaustive oracle instead of the GA (small clusters)
    mixed: bool = False  # may assign MIXED replicas (off until the simulator runs them: the method's roles)
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

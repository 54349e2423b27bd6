"""The one registry of planning systems: e2llm and every baseline.

`e2llm plan --system`, `e2llm compare --systems`, re-planning and the experiments all read from
here. The registry is filled in this one place (Vidur's pattern): the planners are plain
functions `PlanRequest -> Plan` (see `plan/request.py`) that know nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from e2llm.errors import InputError
from e2llm.plan.baselines import plan_colocated, plan_pipeline, plan_splitwise
from e2llm.plan.e2llm_planner import plan_e2llm
from e2llm.plan.memory_proportional import plan_memory_proportional
from e2llm.plan.request import Planner

SYSTEMS: Mapping[str, Planner] = MappingProxyType(
    {
        "e2llm": plan_e2llm,
        "memory-proportional": plan_memory_proportional,
        "splitwise": plan_splitwise,
        "pipeline": plan_pipeline,
        "colocated": plan_colocated,
    }
)


def get_system(name: str) -> Planner:
    if name not in SYSTEMS:
        raise InputError("system", f"unknown system; choose from {', '.join(system_names())}", name)
    return SYSTEMS[name]


def system_names() -> list[str]:
    return sorted(SYSTEMS)

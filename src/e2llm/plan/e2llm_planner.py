"""The "e2llm" system: GA grouping (or the exhaustive oracle), DP layer split, role assignment."""

from __future__ import annotations

import time

from e2llm.plan.build import build_plan
from e2llm.plan.dp import partition_layers_many
from e2llm.plan.request import PlanRequest
from e2llm.plan.search import search_grouping
from e2llm.plan.types import Plan


def plan_e2llm(req: PlanRequest) -> Plan:
    start = time.perf_counter()
    grouping = search_grouping(req, partition_layers_many)
    return build_plan("e2llm", req, grouping, time.perf_counter() - start)

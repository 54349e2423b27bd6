"""The "memory-proportional" baseline: e2llm's grouping and roles, exo / llama.cpp RPC's split.

exo and llama.cpp's RPC backend give each device a share of the layers proportional to its
memory, whatever its speed or links. This system keeps everything else of e2llm (the GA over
groups, roles and concurrencies, on the same cost model) and replaces only the DP by that split
(`dp.proportional_partition_many`), so comparing the two isolates what the optimal split is worth.
The GA still searches groups with the proportional split inside its fitness: the baseline gets
the best grouping for its own split rule, not e2llm's.
"""

from __future__ import annotations

import time

from e2llm.plan.build import build_plan
from e2llm.plan.dp import proportional_partition_many
from e2llm.plan.request import PlanRequest
from e2llm.plan.search import search_grouping
from e2llm.plan.types import Plan


def plan_memory_proportional(req: PlanRequest) -> Plan:
    start = time.perf_counter()
    grouping = search_grouping(req, proportional_partition_many)
    return build_plan("memory-proportional", req, grouping, time.perf_counter() - start)

"""The baseline planners: what each builds on the paper testbed, and that the simulator runs it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from e2llm.cost.build import build_cost_model
from e2llm.cost.model import CostModel
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system
from e2llm.plan.types import Plan, PlannerParams, Role
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.sim.simulator import simulate
from e2llm.sim.validate import check_plan
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model
from e2llm.specs.workload import Request

ROOT = Path(__file__).resolve().parents[2]


@cache
def _cost() -> CostModel:
    return build_cost_model(
        load_model("gpt-oss-20b"), load_cluster(ROOT / "examples/clusters/paper-testbed.yaml")
    )


@cache
def _plan(system: str, interval_s: float = 1.0) -> Plan:
    return get_system(system)(
        PlanRequest(_cost(), WorkloadShape(576, 588, interval_s), PlannerParams(seed=1))
    )


def _devices(plan: Plan) -> list[str]:
    return sorted([d for r in plan.replicas for d in r.devices] + list(plan.unused_devices))


@pytest.mark.parametrize("system", ["splitwise", "pipeline", "colocated"])
def test_valid_and_simulates(system: str) -> None:
    plan = _plan(system)
    assert plan.system == system
    check_plan(plan, _cost())
    assert _devices(plan) == sorted(_cost().cluster.names)
    reqs = [Request(i, i * 1.0, 500, 50) for i in range(20)]
    assert all(r.completed for r in simulate(plan, _cost(), reqs).records)


def test_splitwise_pools_and_scheduler() -> None:
    plan = _plan("splitwise")
    assert plan.scheduler == "splitwise"
    prompt = [r for r in plan.replicas if r.role is Role.PREFILL]
    token = [r for r in plan.replicas if r.role is Role.DECODER]
    assert prompt and token
    # the prompt pool holds the most compute-capable replicas
    assert min(r.prefill_capacity_tok_s or 0 for r in prompt) > 0
    # groups formed greedily by memory: the 25 GB Jetson alone, then each 22 GB M2 Max alone
    groups = {r.devices for r in plan.replicas}
    assert {("dev7",), ("dev5",), ("dev6",)} <= groups
    # no speed floor: token machines batch up to 16 as memory allows
    assert max(r.concurrency for r in token) == 16


def test_pipeline_is_one_colocated_replica() -> None:
    plan = _plan("pipeline")
    assert len(plan.replicas) == 1 and plan.replicas[0].role is Role.COLOCATED


def test_colocated_uses_e2llm_groups() -> None:
    e2llm, colocated = _plan("e2llm"), _plan("colocated")
    assert [r.devices for r in colocated.replicas] == [r.devices for r in e2llm.replicas]
    assert all(r.role is Role.COLOCATED for r in colocated.replicas)
    assert colocated.unused_devices == e2llm.unused_devices

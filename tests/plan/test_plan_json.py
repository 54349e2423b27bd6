"""The plan contract: any plan survives JSON unchanged, and old plan files still load."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm.errors import InputError
from e2llm.plan.plan_json import load_plan, plan_from_dict, plan_to_dict
from e2llm.plan.types import (
    Objective,
    ObjectiveKind,
    Plan,
    PlannerParams,
    PlannerStats,
    Replica,
    Role,
    Scheduler,
    Stage,
)
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_spec import BYTES_PER_PARAM, ModelSpec

REPO = Path(__file__).resolve().parents[2]
NAMES = st.text("abcdefghij0123456789-_", min_size=1, max_size=8)


def _number(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


SPEED = st.none() | _number(0.0, 1e12)


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    devices = tuple(
        Device(
            name=n,
            memory_gb=draw(_number(1e-3, 1e6)),
            tflops=draw(_number(1e-6, 1e6)),
            mem_bandwidth_gbs=draw(_number(1e-6, 1e7)),
            host_memory_gb=draw(_number(0.0, 1e6)),
            preset=draw(st.none() | st.just("rtx-4090")),
            profile=draw(st.none() | st.just("/profiles/dev.json")),
        )
        for n in names
    )
    link = st.builds(Link, _number(1e-3, 1e9), _number(0.0, 1e6))
    pairs = [frozenset(p) for p in itertools.pairwise(names)]
    links = {p: draw(link) for p in pairs if draw(st.booleans())}
    return Cluster(devices=devices, default_link=draw(link), links=links)


precisions = st.sampled_from(sorted(BYTES_PER_PARAM))
token_ids = st.lists(st.integers(0, 2**18), max_size=3).map(tuple)


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    n_experts = draw(st.integers(0, 64))
    return ModelSpec(
        name=draw(NAMES),
        n_layers=draw(st.integers(1, 200)),
        hidden=draw(st.integers(1, 2**14)),
        n_heads=draw(st.integers(1, 128)),
        n_kv_heads=draw(st.integers(1, 128)),
        head_dim=draw(st.integers(1, 256)),
        intermediate=draw(st.integers(1, 2**16)),
        vocab=draw(st.integers(1, 2**18)),
        max_context=draw(st.integers(1, 2**20)),
        n_experts=n_experts,
        experts_per_token=draw(st.integers(1, n_experts)) if n_experts else 0,
        tied_embeddings=draw(st.booleans()),
        sliding_window=draw(st.integers(0, 4096)),
        sliding_layers=draw(st.lists(st.integers(0, 100), max_size=4).map(tuple)),
        weight_precision=draw(precisions),
        expert_precision=draw(precisions),
        kv_bytes_per_value=draw(_number(0.5, 4.0)),
        model_type=draw(st.sampled_from(["llama", "qwen2", "gpt_oss"])),
        rms_eps=draw(_number(1e-8, 1e-3)),
        qkv_bias=draw(st.booleans()),
        rope_theta=draw(_number(1.0, 1e7)),
        rope_type=draw(st.sampled_from(["default", "llama3", "yarn"])),
        rope_factor=draw(_number(0.1, 64.0)),
        rope_original_max_position=draw(st.integers(1, 2**17)),
        eos_token_ids=draw(token_ids),
    )


shapes = st.builds(
    WorkloadShape,
    mean_input_tokens=_number(1e-3, 1e6),
    mean_output_tokens=_number(1e-3, 1e6),
    interval_s=_number(1e-6, 1e6),
    min_decode_tok_s=_number(0.0, 1e3),
    kv_context_tokens=_number(0.0, 1e7),
)
stages = st.builds(
    Stage,
    device=NAMES,
    start=st.integers(0, 50),
    end=st.integers(50, 100),
    embedding=st.booleans(),
    lm_head=st.booleans(),
    memory_gb=_number(0.0, 1e6),
)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 4))
    ids = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    replicas = tuple(
        Replica(
            id=i,
            role=draw(st.sampled_from(Role)),
            stages=tuple(draw(st.lists(stages, min_size=1, max_size=3))),
            concurrency=draw(st.integers(1, 10**6)),
            prefill_tok_s=draw(SPEED),
            decode_tok_s_per_request=draw(SPEED),
            bottleneck_device=draw(st.just("") | NAMES),
            prefill_capacity_tok_s=draw(SPEED),
            decode_capacity_tok_s=draw(SPEED),
        )
        for i in ids
    )
    params = draw(
        st.none() | st.builds(PlannerParams, st.integers(0, 2**31), st.sampled_from(Objective), st.booleans())
    )
    kind = params.objective.kind if params is not None else draw(st.sampled_from(ObjectiveKind))
    return Plan(
        system=draw(NAMES),
        model=draw(NAMES),
        objective=draw(_number(-1e9, 1e9)),
        objective_kind=kind,
        replicas=replicas,
        unused_devices=tuple(draw(st.lists(NAMES, max_size=3))),
        planner=draw(
            st.builds(PlannerStats, st.integers(0, 10**9), _number(0.0, 1e6), st.integers(0, 10**4))
        ),
        scheduler=draw(st.sampled_from(Scheduler)),
        cluster=draw(st.none() | clusters()),
        model_spec=draw(st.none() | models()),
        workload=draw(st.none() | shapes),
        params=params,
    )


@settings(max_examples=200, deadline=None)
@given(plans())
def test_any_plan_survives_json_unchanged(plan: Plan) -> None:
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan


def test_an_uncomputed_objective_stays_uncomputed() -> None:
    replica = Replica(0, Role.COLOCATED, (Stage("a", 0, 4, embedding=True, lm_head=True),))
    plan = Plan("hand", "m", float("nan"), ObjectiveKind.BOTTLENECK_S, (replica,))
    back = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert math.isnan(back.objective) and back.replicas == plan.replicas and back.cluster is None


# Plans an earlier e2llm wrote (the first fidelity experiment's, kept when it was redone).
OLD_PLANS = sorted((Path(__file__).parent / "data").glob("plan-before-the-workload-contract*.json"))


@pytest.mark.parametrize("path", OLD_PLANS, ids=lambda p: str(p.relative_to(REPO)))
def test_plan_files_written_before_the_contract_carried_workloads_load(path: Path) -> None:
    plan = load_plan(path)
    assert plan.cluster is not None and plan.model_spec is not None and plan.workload is None
    old = json.loads(path.read_text())["planner"]
    # written before plans carried `mixed`, when the planner assigned PREFILL/DECODER only:
    # re-planning one asks that again, not the newer default (MIXED allowed)
    assert "mixed" not in old
    assert plan.params == PlannerParams(seed=old["seed"], objective=Objective.BOTTLENECK, mixed=False)
    assert plan.precision == plan.model_spec.weight_precision  # a dense model: one format


def test_old_files_exist() -> None:
    assert OLD_PLANS  # the compatibility test above must not pass by having nothing to load


def test_plans_embedded_in_old_compare_results_load() -> None:
    doc: dict[str, Any] = json.loads((REPO / "experiments/paper/results.json").read_text())
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "replicas" in node and "system" in node:
                found.append(plan_from_dict(node, "results.json"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert len(found) >= 10
    assert all(p.params is not None for p in found if p.system != "hand")


@pytest.mark.parametrize("role", ["MIXED", "COLOCATED", "PREFILL", "DECODER"])
def test_every_role_reads(role: str) -> None:
    doc = {
        "system": "t",
        "model": "m",
        "objective": 0,
        "replicas": [{"role": role, "devices": [{"name": "a", "layers": [0, 4]}]}],
    }
    assert plan_from_dict(doc).replicas[0].role == Role(role)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"scheduler": "fifo"}, "scheduler: must be jsq or splitwise"),
        ({"objective_kind": "latency"}, "objective_kind: must be bottleneck_s or neg_max_rate"),
        (
            {"planner": {"seed": 1, "objective": "latency"}},
            "planner.objective: must be bottleneck or max_rate",
        ),
        ({"planner": {"seed": 1, "objective": "max_rate"}}, "does not match objective_kind bottleneck_s"),
        (
            {"workload": {"mean_input_tokens": 5, "mean_output_tokens": 5}},
            "workload: missing field 'interval_s'",
        ),
        (
            {"workload": {"mean_input_tokens": 5, "mean_output_tokens": 5, "interval_s": 0}},
            "interval_s: must be",
        ),
    ],
)
def test_bad_contract_fields_are_one_line(change: dict[str, Any], needle: str) -> None:
    doc = {
        "system": "t",
        "model": "m",
        "objective": 0,
        "replicas": [{"role": "MIXED", "devices": [{"name": "a", "layers": [0, 4]}]}],
    }
    with pytest.raises(InputError, match=needle):
        plan_from_dict({**doc, **change}, "p.json")

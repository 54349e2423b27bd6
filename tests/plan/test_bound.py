"""The fluid upper bound: never below a plan's predicted rate, exact for one device, zero (and
planning's error) when the model fits nowhere."""

from __future__ import annotations

import dataclasses
import random

import pytest
from test_search import SHAPE, TINY, random_cluster

from e2llm.cost.build import build_cost_model
from e2llm.cost.model import CostModel
from e2llm.errors import InputError
from e2llm.plan.bound import rate_bound
from e2llm.plan.build import plan_bound
from e2llm.plan.dp import partition_layers_many
from e2llm.plan.request import PlanRequest
from e2llm.plan.search import search_grouping
from e2llm.plan.types import PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.device import Cluster, Device, Link

# gpt-oss-like: every other layer attends to a 64-token window (less KV)
SLIDING = dataclasses.replace(TINY, name="tiny-sliding", sliding_window=64, sliding_layers=(0, 2, 4, 6))


def _random_case(rng: random.Random) -> tuple[CostModel, WorkloadShape]:
    cost = build_cost_model(rng.choice((TINY, SLIDING)), random_cluster(rng.randint(2, 5), rng))
    shape = dataclasses.replace(
        SHAPE,
        interval_s=rng.choice((0.02, 0.2)),
        min_decode_tok_s=rng.choice((0.0, 15.0, 30.0)),
        mean_input_tokens=rng.choice((128, 512, 2048)),
        mean_output_tokens=rng.choice((32, 256, 600)),
    )
    return cost, shape


@pytest.mark.parametrize("mixed", [False, True])
def test_no_plan_beats_the_bound(mixed: bool) -> None:
    """Against the exhaustive optimum of the max_rate objective (every grouping, split and role
    vector) on small random clusters, with and without MIXED roles, speed floors and sliding-
    window layers: the bound for the roles allowed is never below it."""
    rng = random.Random(8)
    checked = 0
    for _ in range(8):
        cost, shape = _random_case(rng)
        req = PlanRequest(cost, shape, PlannerParams(objective="max_rate", exhaustive=True, mixed=mixed))
        try:
            best = search_grouping(req, partition_layers_many)  # the planner's optimum
        except InputError:
            continue
        bound = rate_bound(cost, best.shape or shape, mixed=mixed)
        assert best.assignment.rate_rps <= bound * (1 + 1e-9)
        assert best.assignment.rate_rps >= 0.2 * bound  # and the bound is not vacuous
        checked += 1
    assert checked >= 5


def test_one_device_bound_is_its_time_per_request() -> None:
    """One device that holds the model at any batch: the bound is 1 / (its seconds per request)
    at the best batch, with no speed floor to cap the batch (the prompt's LM-head row is one
    row, each token's a row of a 16-sequence step)."""
    cost = build_cost_model(TINY, Cluster((Device("solo", 80.0, 20.0, 400.0),), Link(1000.0, 0.3)))
    shape = dataclasses.replace(SHAPE, min_decode_tok_s=0.0)
    t = cost.times["solo"]
    ctx = round(shape.mean_input_tokens + shape.mean_output_tokens / 2)
    out, n_layers = shape.mean_output_tokens, TINY.n_layers
    per_request = (
        n_layers * t.layer_prefill_s(round(shape.mean_input_tokens))
        + n_layers * out * t.layer_decode_s(16, ctx) / 16
        + t.head_s(1)
        + out * t.head_s(16) / 16
    )
    got = rate_bound(cost, shape)
    assert got == pytest.approx(1.0 / per_request, rel=1e-6)


def test_zero_bound_is_plannings_error() -> None:
    devices = (Device("p1", 1.0, 1.0, 10.0), Device("p2", 1.5, 1.0, 10.0))
    cost = build_cost_model(TINY, Cluster(devices, Link(1000.0, 0.3)))
    assert rate_bound(cost, SHAPE) == 0.0
    with pytest.raises(InputError) as bound_error:
        plan_bound(cost, SHAPE)
    with pytest.raises(InputError) as plan_error:
        search_grouping(PlanRequest(cost, SHAPE), partition_layers_many)
    assert str(bound_error.value) == str(plan_error.value)
    assert "fits in no grouping of the devices" in str(bound_error.value)


def test_slow_links_lower_the_bound_without_mixed_only() -> None:
    """Disaggregated serving ships every prompt's KV; MIXED serving does not."""
    devices = tuple(Device(f"d{i}", 4.0, 10.0, 200.0) for i in range(4))
    fast = build_cost_model(TINY, Cluster(devices, Link(10_000.0, 0.1)))
    slow = build_cost_model(TINY, Cluster(devices, Link(5.0, 0.1)))
    shape = WorkloadShape(2048, 64, 0.1, 0.0)
    assert rate_bound(slow, shape, mixed=False) < 0.5 * rate_bound(fast, shape, mixed=False)
    assert rate_bound(slow, shape) == pytest.approx(rate_bound(fast, shape), rel=1e-6)

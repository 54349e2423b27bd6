"""The planner's view of a workload: means, KV budget, and the longer-than-average lengths it
plans for."""

from __future__ import annotations

import dataclasses

import pytest
from test_search import SHAPE, TINY, random_cluster

from e2llm.cost.build import build_cost_model
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system
from e2llm.plan.workload_shape import ROBUST_WINDOW, WorkloadShape, _window_quantile
from e2llm.specs.workload import Arrival, LengthDist, Workload


def workload(cv: float, seed: int = 1) -> Workload:
    return Workload(
        requests=1000,
        seed=seed,
        arrival=Arrival("fixed", 0.5),
        input_tokens=LengthDist("lognormal", 576, cv=cv, high=5760) if cv else LengthDist("fixed", 576),
        output_tokens=LengthDist("lognormal", 588, cv=cv, high=5880) if cv else LengthDist("fixed", 588),
    )


def test_robust_lengths_are_the_window_means_90th_percentile() -> None:
    shape = WorkloadShape.of(workload(0.5))
    # 100-request windows of cv 0.5: the mean's spread is 5%, its 90th percentile ~ +6%
    assert 1.02 * 576 < shape.robust_input_tokens < 1.15 * 576
    assert 1.02 * 588 < shape.robust_output_tokens < 1.15 * 588
    fixed = WorkloadShape.of(workload(0.0))
    assert fixed.robust_input_tokens == 576 and fixed.robust_output_tokens == 588
    assert fixed.robust() == fixed  # nothing to add to fixed lengths
    assert shape.robust().mean_input_tokens == shape.robust_input_tokens
    assert shape.robust().robust() == shape.robust()


def test_robust_lengths_come_from_another_sample_than_the_served_one() -> None:
    a, b = WorkloadShape.of(workload(0.5, seed=1)), WorkloadShape.of(workload(0.5, seed=2))
    assert a.robust_input_tokens != b.robust_input_tokens  # a sample per seed ...
    served = [r.input_tokens for r in workload(0.5, seed=1).generate()]
    assert a.robust_input_tokens != pytest.approx(
        _window_quantile(served), rel=1e-9
    )  # ... not the served one


def test_window_quantile() -> None:
    assert _window_quantile([1] * (ROBUST_WINDOW - 1)) == 0.0
    steps = [0] * ROBUST_WINDOW + [10] * ROBUST_WINDOW  # window means rise from 0 to 10
    assert _window_quantile(steps) == pytest.approx(9.0, abs=0.1)


def test_the_planner_keeps_headroom_for_the_robust_lengths() -> None:
    cost = build_cost_model(TINY, random_cluster(5, __import__("random").Random(3)))
    robust = dataclasses.replace(SHAPE, robust_input_tokens=1.3 * 512, robust_output_tokens=1.3 * 256)
    plan = get_system("e2llm")(PlanRequest(cost, robust))
    assert plan.workload == robust  # the plan records what it was asked
    at_means = get_system("e2llm")(PlanRequest(cost, SHAPE))
    # the rate is predicted at the longer lengths: 30% more work per request
    assert plan.rate_rps is not None and at_means.rate_rps is not None
    assert plan.rate_rps < at_means.rate_rps

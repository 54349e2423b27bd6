"""The drift detector and the live workload window (pure: times are arguments), and the
roles-or-regroup choice of a drift re-plan on a real cost model."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.request import PlanRequest
from e2llm.plan.role_scoring import RoleAssignment
from e2llm.plan.systems import get_system
from e2llm.plan.types import Objective, PlannerParams, Role
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.runtime.capacity import best_roles, plan_capacities
from e2llm.runtime.drift import DriftDetector, DriftSettings, WorkloadWindow, drift
from e2llm.runtime.drift_replan import regroup_pays
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model

ROOT = Path(__file__).resolve().parents[2]
CHAT = WorkloadShape(mean_input_tokens=100, mean_output_tokens=100, interval_s=1.0, min_decode_tok_s=5)


def test_drift_is_the_largest_factor_of_change_minus_one() -> None:
    assert drift(CHAT, CHAT) == 0.0
    longer = WorkloadShape(400, 100, 1.0)
    assert drift(CHAT, longer) == pytest.approx(3.0)  # prompts 4x as long
    assert drift(CHAT, WorkloadShape(100, 50, 1.0)) == pytest.approx(1.0)  # halving counts as doubling
    assert drift(CHAT, WorkloadShape(100, 100, 0.5)) == pytest.approx(1.0)  # twice the arrival rate


def test_the_window_measures_rate_and_lengths_of_recent_requests_only() -> None:
    w = WorkloadWindow(window_s=10.0, start_s=0.0)
    assert w.shape(5.0, CHAT) is None  # nothing arrived
    for t in range(20):  # two requests a second, 200-token prompts
        w.arrive(t / 2, 200)
    got = w.shape(10.0, CHAT, min_requests=5)
    assert got is not None
    assert got.interval_s == pytest.approx(0.5) and got.mean_input_tokens == 200
    assert got.mean_output_tokens == 100 and got.min_decode_tok_s == 5  # from the base until one ends
    for t in range(10):
        w.finish(9.0 + t / 100, 200, 20 + 2 * t)
    got = w.shape(10.0, CHAT)
    assert got is not None and got.mean_output_tokens == pytest.approx(29.0)
    assert got.kv_context_tokens == 236.0  # 90th percentile of prompt + output
    assert w.demand(10.0, CHAT).mean_input_tokens == 200
    assert w.shape(30.0, CHAT) is None  # all older than the window
    assert w.shape(10.0, CHAT, min_requests=100) is None


def test_the_detector_fires_once_a_drift_has_lasted_and_then_plans_from_the_new_shape() -> None:
    d = DriftDetector(CHAT, DriftSettings(threshold=0.5, hold_s=10.0))
    longer = WorkloadShape(300, 100, 1.0)
    assert d.observe(0.0, CHAT) is None
    assert d.observe(1.0, longer) is None and d.since_s == 1.0
    assert d.observe(5.0, CHAT) is None and d.since_s is None  # a burst shorter than the hold
    assert d.observe(6.0, longer) is None
    assert d.observe(15.9, longer) is None
    assert d.observe(16.0, longer) == longer  # held for 10 s
    assert d.planned == longer
    assert d.observe(40.0, longer) is None  # the same shift re-plans once
    assert d.observe(41.0, None) is None  # too few requests to judge


def test_a_zero_threshold_turns_detection_off() -> None:
    d = DriftDetector(CHAT, DriftSettings(threshold=0.0, hold_s=0.0))
    assert d.observe(0.0, WorkloadShape(10_000, 1, 0.01)) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", -0.1),
        ("threshold", float("nan")),
        ("window_s", 0.0),
        ("hold_s", 1e9),
        ("min_requests", 0),
    ],
)
def test_settings_out_of_range_name_the_setting(field: str, value: float) -> None:
    with pytest.raises(InputError, match=f"drift_{field}"):
        DriftSettings(**{field: value})  # type: ignore[arg-type]


def _assignment(objective: float) -> RoleAssignment:
    return RoleAssignment((True, False), (1, 4), objective, 1.0, 1.0, 1.0)


def test_regrouping_only_when_it_clearly_beats_new_roles_on_the_running_groups() -> None:
    assert not regroup_pays(_assignment(0.0), _assignment(0.0))  # both keep up: roles absorb it
    assert not regroup_pays(_assignment(1.0), _assignment(0.95))  # within the margin
    assert regroup_pays(_assignment(1.0), _assignment(0.5))
    assert regroup_pays(None, _assignment(0.5)) and not regroup_pays(_assignment(1.0), None)


def test_roles_follow_the_shape_on_the_running_groups() -> None:
    """Four one-device replicas planned for chat with the method's roles (`mixed=False`: a drift
    re-plan switches PREFILL / DECODER replicas only): for long prompts the same groups get more
    PREFILL replicas; for long answers more decoders."""
    cost = build_cost_model(
        load_model("smollm2-135m"), load_cluster(ROOT / "examples/clusters/local-cpu-4x1.yaml")
    )
    plan = get_system("e2llm")(
        PlanRequest(cost, CHAT, PlannerParams(objective=Objective.MAX_RATE, mixed=False))
    )
    assert len(plan.replicas) == 4 and {r.role for r in plan.replicas} == {Role.PREFILL, Role.DECODER}
    caps = list(plan_capacities(plan).values())
    chat = best_roles(caps, CHAT, Objective.MAX_RATE)
    prompts = best_roles(caps, WorkloadShape(1500, 10, 1.0, 5), Objective.MAX_RATE)
    answers = best_roles(caps, WorkloadShape(20, 400, 1.0, 5), Objective.MAX_RATE)
    assert chat is not None and prompts is not None and answers is not None
    assert sum(prompts.prefill) > sum(chat.prefill) or sum(chat.prefill) == len(caps) - 1
    assert sum(answers.prefill) < sum(prompts.prefill)

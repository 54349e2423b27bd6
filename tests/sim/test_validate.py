"""Plans the simulator refuses, and the KV sizes it uses."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from simkit import TINY, cost_model, plan, replica

from e2llm.cost.model import CostModel
from e2llm.errors import InputError
from e2llm.plan.plan_json import plan_from_dict, plan_to_dict
from e2llm.plan.types import Role, Stage
from e2llm.sim.state import NO_KV_LIMIT, RangeKv
from e2llm.sim.validate import check_plan, check_serves
from e2llm.specs.workload import Request


def _ok():
    return plan(replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]), replica(1, Role.DECODER, [("c", 0, 4)]))


def test_valid_plan_passes() -> None:
    check_plan(_ok(), cost_model(["a", "b", "c"]))


# Role checks: the same without a cost model (what `serve` checks on a plan that embeds none).
ROLE_CASES = [
    (plan(replica(0, Role.PREFILL, [("a", 0, 4)]), replica(1, Role.PREFILL, [("c", 0, 4)])), "DECODER"),
    (plan(replica(0, Role.COLOCATED, [("a", 0, 4)]), replica(1, Role.DECODER, [("c", 0, 4)])), "mixes"),
    (plan(replica(0, Role.COLOCATED, [("a", 0, 4)]), scheduler="splitwise"), "splitwise"),
    (
        plan(
            replica(0, Role.PREFILL, [("a", 0, 4)]),
            replica(1, Role.MIXED, [("c", 0, 4)]),
            scheduler="splitwise",
        ),
        "splitwise",
    ),
]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        *ROLE_CASES,
        (plan(replica(0, Role.PREFILL, [("a", 0, 4)]), replica(1, Role.DECODER, [("x", 0, 4)])), "not in"),
        (
            plan(replica(0, Role.PREFILL, [("a", 0, 4)]), replica(1, Role.DECODER, [("a", 0, 4)])),
            "more than one",
        ),
        (
            plan(
                replica(0, Role.PREFILL, [("a", 0, 2), ("b", 3, 4)]), replica(1, Role.DECODER, [("c", 0, 4)])
            ),
            "start",
        ),
        (plan(replica(0, Role.PREFILL, [("a", 0, 3)]), replica(1, Role.DECODER, [("c", 0, 4)])), "cover"),
    ],
)
def test_bad_plans(bad, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_plan(bad, cost_model(["a", "b", "c"]))


@pytest.mark.parametrize(("bad", "needle"), ROLE_CASES)
def test_role_checks_need_no_cost_model(bad, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_plan(bad, None)


def test_an_unknown_scheduler_is_refused_where_the_plan_is_read() -> None:
    doc = {**plan_to_dict(plan(replica(0, Role.COLOCATED, [("a", 0, 4)]))), "scheduler": "random"}
    with pytest.raises(InputError, match="scheduler"):
        plan_from_dict(doc)


def test_needs_one_embedding_and_head() -> None:
    p = _ok()
    r = p.replicas[1]
    no_head = replace(r, stages=(Stage("c", 0, 4, embedding=True, lm_head=False),))
    with pytest.raises(InputError, match="lm_head"):
        check_plan(replace(p, replicas=(p.replicas[0], no_head)), cost_model(["a", "b", "c"]))


def test_weights_must_fit() -> None:
    with pytest.raises(InputError, match="weights need"):
        check_plan(_ok(), cost_model(["a", "b", "c"], memory_gb=0.5))  # below the 0.75 GB overhead


def test_decoders_must_hold_one_request() -> None:
    cost = cost_model(["a", "b", "c"], model=replace(TINY, max_context=10**8))
    check_serves(_ok(), cost, [Request(0, 0.0, 100, 10)])
    with pytest.raises(InputError, match="no decoder can hold"):
        check_serves(_ok(), cost, [Request(0, 0.0, 10**6, 10**6)])
    with pytest.raises(InputError, match="no prefill replica can hold"):
        check_serves(_ok(), cost, [Request(0, 0.0, 10**7, 10)])


def test_range_kv_equals_cost_model_with_sliding_window() -> None:
    model = replace(TINY, n_layers=6, sliding_window=128, sliding_layers=(0, 2, 4))
    cost = CostModel(model, cost_model(["a"]).cluster, {})
    for lo, hi in [(0, 6), (1, 4), (2, 3), (5, 6)]:
        kv = RangeKv(model, lo, hi)
        for ctx in (1, 100, 128, 129, 5000):
            assert kv.bytes(ctx) == pytest.approx(cost.kv_bytes(lo, hi, ctx))


def test_mixed_replicas_are_valid_beside_any_phase() -> None:
    cost = cost_model(["a", "b", "c"])
    check_plan(plan(replica(0, Role.MIXED, [("a", 0, 4)], concurrency=2)), cost)
    check_plan(plan(replica(0, Role.PREFILL, [("a", 0, 4)]), replica(1, Role.MIXED, [("b", 0, 4)])), cost)
    check_plan(plan(replica(0, Role.MIXED, [("a", 0, 4)]), replica(1, Role.DECODER, [("b", 0, 4)])), cost)
    with pytest.raises(InputError, match="splitwise needs PREFILL and DECODER replicas only"):
        check_plan(
            plan(
                replica(0, Role.PREFILL, [("a", 0, 4)]),
                replica(1, Role.MIXED, [("b", 0, 4)]),
                replica(2, Role.DECODER, [("c", 0, 4)]),
                scheduler="splitwise",
            ),
            cost,
        )


def test_mixed_replica_must_hold_a_chunk() -> None:
    # ~300 KB left for KV beside the 0.75 GB overhead and 423 KB of weights: ~290 tokens at 1 KiB
    cost = cost_model(["a"], memory_gb=0.75068)
    p = plan(replica(3, Role.MIXED, [("a", 0, 4)]))
    check_plan(p, cost, "plan.json", chunk_tokens=128)
    with pytest.raises(InputError) as err:
        check_plan(p, cost, "plan.json", chunk_tokens=512)
    assert str(err.value) == (
        "plan.json: replica 3.role: a MIXED replica must hold the KV of one 512-token chunk (got 'MIXED')"
    )


def test_max_context_inverts_kv_bytes_with_sliding_windows() -> None:
    model = replace(TINY, n_layers=6, sliding_window=128, sliding_layers=(0, 2, 4))
    rng = random.Random(5)
    for _ in range(500):
        a = rng.randrange(0, 6)
        b = rng.randrange(a + 1, 7)
        kv = RangeKv(model, a, b)
        free = rng.uniform(0, 5e6)
        c = kv.max_context(free)
        if c == NO_KV_LIMIT:  # only sliding-window layers: their KV stops growing at the window
            assert kv.bytes(10**9) <= free
        else:
            assert kv.bytes(c) <= free < kv.bytes(c + 1), (a, b, free, c)
    assert RangeKv(model, 0, 6).max_context(-1.0) == -1
    assert RangeKv(model, 3, 3).max_context(0.0) == NO_KV_LIMIT  # no layers, no KV

"""Role + concurrency assignment: the polynomial algorithm against the method's enumeration."""

from __future__ import annotations

import random

import pytest

from e2llm.plan.roles import (
    OBJECTIVES,
    DecodeChoice,
    ReplicaRates,
    assign_roles,
    assign_roles_exhaustive,
    objective_value,
)


def random_replica(rng: random.Random) -> ReplicaRates:
    choices = tuple(
        DecodeChoice(c, rng.uniform(0.05, 2.0), rng.uniform(5.0, 60.0))
        for c in sorted(rng.sample(range(1, 17), rng.randint(0, 4)))
    )
    return ReplicaRates(rng.uniform(0.1, 3.0), rng.uniform(0.2, 5.0), choices)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("interval_s", [0.2, 0.5, 2.0])
def test_polynomial_equals_enumeration_on_small_cases(objective: str, interval_s: float) -> None:
    rng = random.Random(11)
    compared = 0
    for _ in range(120):
        replicas = [random_replica(rng) for _ in range(rng.randint(2, 5))]
        got = assign_roles(replicas, interval_s, objective)
        want = assign_roles_exhaustive(replicas, interval_s, objective)
        if want is None:
            assert got is None
            continue
        compared += 1
        assert got is not None
        assert got.objective == pytest.approx(want.objective, rel=1e-9, abs=1e-9)
        if got.objective == 0.0:  # both keep up: the tie-break decides, within one concurrency rule
            capped = assign_roles_exhaustive(replicas, interval_s, objective, every_concurrency=False)
            assert capped is not None and got.latency_s == pytest.approx(capped.latency_s, rel=1e-9)
    assert compared > 80


def test_assignment_is_consistent() -> None:
    rng = random.Random(3)
    for _ in range(200):
        replicas = [random_replica(rng) for _ in range(rng.randint(2, 30))]
        got = assign_roles(replicas, 0.5, "bottleneck")
        if got is None:
            continue
        assert any(got.prefill) and not all(got.prefill)
        p = sum(r.prefill_rps for r, is_p in zip(replicas, got.prefill, strict=True) if is_p)
        assert got.prefill_rps == pytest.approx(p)
        d = 0.0
        for r, is_p, c in zip(replicas, got.prefill, got.concurrency, strict=True):
            if not is_p:
                choice = {x.concurrency: x for x in r.decode}[c]  # a decoder runs a feasible batch
                d += choice.rate_rps
        assert got.decode_rps == pytest.approx(d)
        assert got.objective == pytest.approx(objective_value("bottleneck", p, d, 0.5))


def test_needs_a_replica_that_can_decode() -> None:
    only_prefill = [ReplicaRates(1.0, 1.0), ReplicaRates(2.0, 1.0)]
    assert assign_roles(only_prefill, 1.0, "bottleneck") is None
    assert assign_roles([ReplicaRates(1.0, 1.0, (DecodeChoice(4, 1.0, 10.0),))], 1.0, "bottleneck") is None


def test_prefers_balanced_capacity_over_fast_hardware_on_prefill() -> None:
    # replica 0 is fastest at both; replica 1 and 2 decode well. Balance, not speed, decides.
    replicas = [
        ReplicaRates(4.0, 0.5, (DecodeChoice(16, 1.0, 20.0),)),
        ReplicaRates(1.0, 2.0, (DecodeChoice(16, 2.0, 20.0),)),
        ReplicaRates(1.0, 2.0, (DecodeChoice(16, 2.0, 20.0),)),
    ]
    got = assign_roles(replicas, 0.1, "max_rate")
    assert got is not None and got.prefill == (True, False, False)
    assert got.objective == pytest.approx(-4.0)


def test_bottleneck_objective_measures_excess_over_interval() -> None:
    assert objective_value("bottleneck", 1.0, 4.0, 0.5) == pytest.approx(0.5)  # prefill 1 s/request
    assert objective_value("bottleneck", 10.0, 10.0, 0.5) == 0.0  # keeps up
    assert objective_value("max_rate", 3.0, 2.0, 0.5) == -2.0
    with pytest.raises(ValueError, match="unknown objective"):
        objective_value("fastest", 1.0, 1.0, 1.0)

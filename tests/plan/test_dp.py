"""DP layer partition: equals brute force over all compositions; proportional split baseline."""

from __future__ import annotations

import itertools
import random

import pytest

from e2llm.plan.dp import (
    Partition,
    StageCosts,
    _dp_numpy,
    _two_stages,
    _uniform_layers,
    partition_layers,
    partition_layers_many,
    proportional_partition,
)


def compositions(total: int, parts: int):
    """Every way to write `total` as `parts` positive integers, in order."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def brute_force(costs: StageCosts) -> float | None:
    best = None
    for counts in compositions(costs.n_layers, costs.n_devices):
        if costs.fits(counts):
            b = max(costs.stage_s(counts))
            best = b if best is None else min(best, b)
    return best


def random_costs(rng: random.Random) -> StageCosts:
    k = rng.randint(1, 4)
    n_layers = rng.randint(1, 10)
    layer_bytes = tuple(rng.choice((1.0, 1.5)) * rng.uniform(0.8, 1.2) for _ in range(n_layers))
    total = sum(layer_bytes)
    return StageCosts(
        layer_s=tuple(rng.uniform(0.1, 2.0) for _ in range(k)),
        fixed_s=tuple(rng.uniform(0.0, 3.0) for _ in range(k)),
        free_bytes=tuple(rng.uniform(-0.1, 1.5) * total / max(k - 1, 1) for _ in range(k)),
        layer_bytes=layer_bytes,
    )


def test_dp_equals_brute_force_on_random_instances() -> None:
    rng = random.Random(7)
    feasible = 0
    for _ in range(1500):
        costs = random_costs(rng)
        got = partition_layers(costs)
        want = brute_force(costs)
        if want is None:
            assert got is None
            continue
        feasible += 1
        assert got is not None
        assert costs.fits(got.counts)
        assert got.bottleneck_s == pytest.approx(want, rel=1e-12)
    assert feasible > 300  # the random instances exercise the feasible case too


def test_every_device_gets_a_layer_and_ranges_are_contiguous() -> None:
    costs = StageCosts(
        layer_s=(1.0, 0.01, 1.0), fixed_s=(0.0, 0.0, 0.0), free_bytes=(100.0,) * 3, layer_bytes=(1.0,) * 6
    )
    part = partition_layers(costs)
    assert part is not None
    assert min(part.counts) >= 1 and sum(part.counts) == 6
    assert part.ranges == ((0, 1), (1, 5), (5, 6))
    assert part.bottleneck_s == pytest.approx(1.0)


def test_more_devices_than_layers_is_infeasible() -> None:
    costs = StageCosts(layer_s=(1.0,) * 3, fixed_s=(0.0,) * 3, free_bytes=(9.0,) * 3, layer_bytes=(1.0,) * 2)
    assert partition_layers(costs) is None


def test_memory_forces_a_slower_split() -> None:
    # device 0 is fast but holds at most 2 layers
    costs = StageCosts(layer_s=(0.1, 1.0), fixed_s=(0.0, 0.0), free_bytes=(2.0, 10.0), layer_bytes=(1.0,) * 6)
    part = partition_layers(costs)
    assert part == Partition((2, 4), (0.2, 4.0))


def test_proportional_split_follows_memory() -> None:
    costs = StageCosts(
        layer_s=(1.0, 1.0, 1.0),
        fixed_s=(0.0, 0.0, 0.0),
        free_bytes=(100.0,) * 3,
        layer_bytes=(1.0,) * 24,
        memory_bytes=(12.0, 6.0, 6.0),
    )
    part = proportional_partition(costs)
    assert part is not None and part.counts == (12, 6, 6)


def test_proportional_split_that_overflows_is_infeasible() -> None:
    costs = StageCosts(
        layer_s=(1.0, 1.0),
        fixed_s=(0.0, 0.0),
        free_bytes=(3.0, 100.0),
        layer_bytes=(1.0,) * 10,
        memory_bytes=(50.0, 50.0),
    )
    assert proportional_partition(costs) is None
    assert partition_layers(costs) is not None  # the DP finds the split that fits


def test_batched_dp_equals_one_at_a_time() -> None:
    rng = random.Random(9)
    for k in (2, 3, 4):
        batch = []
        for _ in range(8):
            c = random_costs(rng)
            while c.n_devices != k or c.n_layers != 10:
                c = random_costs(rng)
            batch.append(c)
        assert partition_layers_many(batch) == [partition_layers(c) for c in batch]


def test_two_stage_fast_path_equals_the_general_recurrence() -> None:
    rng = random.Random(12)
    checked = 0
    while checked < 300:
        c = random_costs(rng)
        if c.n_devices == 2:
            assert _two_stages(c) == _dp_numpy([c])[0]
            checked += 1


def test_uniform_layer_fast_path_is_exact() -> None:
    rng = random.Random(21)
    for _ in range(400):
        k, n_layers = rng.randint(3, 5), rng.randint(5, 12)
        w = rng.uniform(0.5, 1.5)
        costs = StageCosts(
            layer_s=tuple(rng.uniform(0.1, 2.0) for _ in range(k)),
            fixed_s=tuple(rng.uniform(0.0, 3.0) for _ in range(k)),
            free_bytes=tuple(rng.uniform(0.5, 1.2) * n_layers * w / (k - 1) for _ in range(k)),
            layer_bytes=(w,) * n_layers,
        )
        fast = _uniform_layers(costs)
        want = brute_force(costs)
        if want is None:
            assert fast is None
        elif fast is not None and fast.counts:  # () marks a fallback to the general recurrence
            assert fast.bottleneck_s == pytest.approx(want, rel=1e-12)
            assert costs.fits(fast.counts)

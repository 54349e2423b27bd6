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
            b = max(costs.stage_s(counts) + costs.port_s(counts))
            best = b if best is None else min(best, b)
    return best


def random_costs(rng: random.Random, ports: bool = False) -> StageCosts:
    """A random instance; with `ports`, half the time with a KV port term per device too."""
    k = rng.randint(1, 4)
    n_layers = rng.randint(1, 10)
    layer_bytes = tuple(rng.choice((1.0, 1.5)) * rng.uniform(0.8, 1.2) for _ in range(n_layers))
    total = sum(layer_bytes)
    kv_s = (
        tuple(rng.choice((0.0, rng.uniform(0.1, 3.0))) for _ in range(k))
        if ports and rng.random() < 0.5
        else ()
    )
    return StageCosts(
        layer_s=tuple(rng.uniform(0.1, 2.0) for _ in range(k)),
        fixed_s=tuple(rng.uniform(0.0, 3.0) for _ in range(k)),
        free_bytes=tuple(rng.uniform(-0.1, 1.5) * total / max(k - 1, 1) for _ in range(k)),
        layer_bytes=layer_bytes,
        kv_s=kv_s,
    )


def test_dp_equals_brute_force_on_random_instances() -> None:
    rng = random.Random(7)
    feasible = 0
    for _ in range(1500):
        costs = random_costs(rng, ports=True)
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
        c = random_costs(rng, ports=True)
        if c.n_devices == 2:
            assert _two_stages(c) == _dp_numpy([c])[0]
            checked += 1


def test_uniform_layer_fast_path_is_exact() -> None:
    rng = random.Random(21)
    fast_answers = 0
    for i in range(1200):
        k, n_layers = rng.randint(3, 6), rng.randint(5, 12)
        w = rng.uniform(0.5, 1.5)
        costs = StageCosts(
            layer_s=tuple(rng.uniform(0.1, 2.0) for _ in range(k)),
            fixed_s=tuple(rng.uniform(0.0, 3.0) for _ in range(k)),
            free_bytes=tuple(rng.uniform(0.5, 1.2) * n_layers * w / (k - 1) for _ in range(k)),
            layer_bytes=(w,) * n_layers,
            # a third of the instances with a KV port per device (some devices without)
            kv_s=tuple(rng.choice((0.0, rng.uniform(0.05, 2.5))) for _ in range(k)) if i % 3 == 0 else (),
        )
        fast = _uniform_layers(costs)
        want = brute_force(costs)
        if want is None:
            assert fast is None
        elif fast is not None and fast.counts:  # () marks a fallback to the general recurrence
            fast_answers += 1
            assert fast.bottleneck_s == pytest.approx(want, rel=1e-12)
            assert costs.fits(fast.counts)
    assert fast_answers > 300  # the fast path answers most dense instances itself


def test_ports_can_outweigh_speed() -> None:
    """A fast device behind a slow port gets fewer layers than its speed alone would give it."""
    base = {
        "layer_s": (0.1, 1.0),
        "fixed_s": (0.0, 0.0),
        "free_bytes": (99.0, 99.0),
        "layer_bytes": (1.0,) * 10,
    }
    fast = partition_layers(StageCosts(**base))  # type: ignore[arg-type]
    slow_port = partition_layers(StageCosts(**base, kv_s=(0.9, 0.0)))  # type: ignore[arg-type]
    assert fast is not None and slow_port is not None
    assert fast.counts == (9, 1)
    assert slow_port.counts == (5, 5)  # max(5 * 0.9 port, 5 * 1.0 compute) = 5 < 9 * 0.9 port
    assert slow_port.bottleneck_s == pytest.approx(5.0)

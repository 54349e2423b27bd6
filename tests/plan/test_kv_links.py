"""KV hand-off capacity of replica pairs: the simulator's per-range transfers, and the screen."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_search import TINY

from e2llm.cost.build import build_cost_model
from e2llm.plan.kv_links import Handoff, KvLinks
from e2llm.specs.device import Cluster, Device, Link


def cluster(rng: random.Random | None = None) -> Cluster:
    devices = tuple(Device(f"d{i}", 4.0, 10.0, 200.0) for i in range(4))
    links = {frozenset(("d1", "d3")): Link(50.0, 3.0)}
    if rng is not None:
        links = {
            frozenset((a.name, b.name)): Link(rng.uniform(20, 1000), 1.0)
            for a in devices
            for b in devices
            if a.name < b.name
        }
    return Cluster(devices, Link(1000.0, 0.3), links)


def test_capacity_is_the_slowest_range_over_its_link() -> None:
    cost = build_cost_model(TINY, cluster())
    links = KvLinks(cost, 512)
    prefill = (("d0", 0, 3), ("d1", 3, 8))
    decoder = (("d2", 0, 5), ("d3", 5, 8))
    # ranges: d0->d2 [0,3), d1->d2 [3,5), d1->d3 [5,8) over the 50 Mbit/s link
    want = min(
        1000e6 / 8 / cost.kv_bytes(0, 3, 512),
        1000e6 / 8 / cost.kv_bytes(3, 5, 512),
        50e6 / 8 / cost.kv_bytes(5, 8, 512),
    )
    assert links.capacity(prefill, decoder) == pytest.approx(want)
    assert links.capacity(prefill, decoder) == pytest.approx(50e6 / 8 / cost.kv_bytes(5, 8, 512))


def test_floor_is_below_every_pair_and_screens_the_matrix() -> None:
    rng = random.Random(4)
    for _ in range(30):
        cost = build_cost_model(TINY, cluster(rng))
        links = KvLinks(cost, 512)
        names = list(cost.cluster.names)
        rng.shuffle(names)
        cut = rng.randint(1, 7)
        pre = ((names[0], 0, cut), (names[1], cut, 8))
        dec = ((names[2], 0, rng.randint(1, 7)),)
        dec = (*dec, (names[3], dec[0][2], 8))
        assert links.floor(pre) <= links.capacity(pre, dec) * (1 + 1e-12)
        busy = [Handoff(0, pre, None, links.floor(pre) * 2), Handoff(1, dec, dec, 0.0)]
        kv = links.matrix(busy)
        assert kv is not None and kv[0, 1] == pytest.approx(links.capacity(pre, dec))
        assert np.isinf(kv[1, 0]) and np.isinf(kv[0, 0])  # replica 0 cannot decode; no self hand-off
        idle = [Handoff(2, pre, None, links.floor(pre) * 0.5), Handoff(1, dec, dec, 0.0)]
        assert links.matrix(idle) is None  # the floor shows no pair can bind


def test_matrix_computes_only_the_rows_and_columns_asked() -> None:
    cost = build_cost_model(TINY, cluster(random.Random(7)))
    links = KvLinks(cost, 512)
    names = cost.cluster.names
    stages = [((names[i], 0, 4), (names[(i + 1) % 4], 4, 8)) for i in range(4)]
    reps = [Handoff(i, s, s, links.floor(s) * 2) for i, s in enumerate(stages)]
    full = links.matrix(reps)
    assert full is not None
    part = links.matrix(reps, [0, 2], [1, 3])
    assert part is not None
    asked = np.zeros((4, 4), dtype=bool)
    asked[np.ix_([0, 2], [1, 3])] = True
    assert np.array_equal(part[asked], full[asked]) and np.isfinite(part[asked]).all()
    assert np.isinf(part[~asked]).all()
    # rows that bind but no column: all inf, not None (None says no row can bind at all)
    none = links.matrix(reps, range(4), ())
    assert none is not None and np.isinf(none).all()
    idle = [Handoff(i + 4, s, s, links.floor(s) * 0.5) for i, s in enumerate(stages)]
    assert links.matrix(idle, range(4), ()) is None


def test_matrix_is_capacity_of_every_pair_exactly() -> None:
    """The matrix is computed in one numpy pass over stage couples; it must be the same numbers
    as `capacity`'s loop (the same divisions), bit for bit."""
    rng = random.Random(9)
    for _ in range(20):
        cost = build_cost_model(TINY, cluster(rng))
        links = KvLinks(cost, rng.choice((64, 512, 3000)))
        names = cost.cluster.names
        reps = [
            Handoff(k, stages(names, rng), stages(names, rng) if rng.random() < 0.8 else None, 1e9)
            for k in range(6)
        ]
        kv = links.matrix(reps)
        assert kv is not None
        for i, pre in enumerate(reps):
            for j, dec in enumerate(reps):
                want = links.capacity(pre.prefill, dec.decoder) if i != j and dec.decoder else np.inf
                assert kv[i, j] == want


def stages(names: tuple[str, ...], rng: random.Random) -> tuple[tuple[str, int, int], ...]:
    """1-3 random devices splitting TINY's 8 layers at random cuts."""
    devs = rng.sample(names, rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, 8), len(devs) - 1))
    return tuple((d, a, b) for d, a, b in zip(devs, [0, *cuts], [*cuts, 8], strict=True))

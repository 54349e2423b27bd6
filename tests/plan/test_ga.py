"""GA mechanics on synthetic fitness functions: validity, determinism, early stop, polish."""

from __future__ import annotations

import random

from e2llm.plan.ga import (
    GAParams,
    Individual,
    _crossover,
    _mutate,
    _neighbours,
    _polish_elites,
    evolve,
    polish,
)
from e2llm.plan.sizer import MemorySizer

FREE = (4.0, 1.0, 2.0, 3.0, 1.0, 2.0, 5.0, 1.0, 2.0)  # device "memory", need 4 per replica
SIZER = MemorySizer(FREE, 4.0)


def valid(ind: Individual, n: int) -> bool:
    return sorted(ind.perm) == list(range(n)) and sum(ind.sizes) <= n and all(s >= 1 for s in ind.sizes)


def fitness(ind: Individual) -> tuple[float, float]:
    """Synthetic: many replicas, little memory wasted; devices 1, 4, 7 are 'bad' in replicas.
    A replica short of memory is infeasible, as in the planner (polish can make one)."""
    if not ind.groups or any(sum(FREE[d] for d in g) < 4.0 for g in ind.groups):
        return (float("inf"), float("inf"))
    waste = sum(sum(FREE[d] for d in g) - 4.0 for g in ind.groups)
    bad = sum(d in (1, 4, 7) for g in ind.groups for d in g)
    return (-float(len(ind.groups)), waste + 10 * bad)


def test_operators_keep_individuals_valid_and_replicas_big_enough() -> None:
    rng = random.Random(0)
    n = len(FREE)
    pop = [Individual(tuple(rng.sample(range(n), n)), ()) for _ in range(10)]
    pop = [Individual(p.perm, SIZER.sample(p.perm, rng)) for p in pop]
    for _ in range(500):
        a, b = rng.sample(pop, 2)
        child = _crossover(a, b, SIZER, rng)
        if rng.random() < 0.5:
            child = _mutate(child, SIZER, rng)
        assert valid(child, n)
        assert all(sum(FREE[d] for d in g) >= 4.0 for g in child.groups)
        pop[rng.randrange(len(pop))] = child


def test_sizer_repair_grows_short_replicas_and_leaves_the_tail_unused() -> None:
    devices = list(range(len(FREE)))
    sizes = SIZER.repair(devices, (1, 1, 1, 1, 1, 1, 1, 1, 1))
    groups, pos = [], 0
    for s in sizes:
        groups.append(devices[pos : pos + s])
        pos += s
    assert groups == [[0], [1, 2, 3], [4, 5, 6]]  # the tail [7, 8] holds only 3 < 4: unused
    assert SIZER.minimal(devices) == sizes


def test_evolve_is_deterministic_and_reports_progress() -> None:
    seen: list[tuple[int, int]] = []
    params = GAParams(population=12, generations=25, patience=25)
    a = evolve(len(FREE), fitness, SIZER, random.Random(3), params, progress=lambda d, t: seen.append((d, t)))
    b = evolve(len(FREE), fitness, SIZER, random.Random(3), params)
    assert a == b
    assert seen == [(g, 25) for g in range(1, a.generations + 1)]
    assert all(x >= y for x, y in zip(a.history, a.history[1:], strict=False))  # elitism: never worse
    assert fitness(a.best) == a.key


def test_early_stop_after_patience() -> None:
    flat = evolve(
        len(FREE), lambda ind: (0.0, 0.0), SIZER, random.Random(1), GAParams(population=8, patience=5)
    )
    assert flat.generations == 5


def test_ga_finds_the_synthetic_optimum() -> None:
    result = evolve(len(FREE), fitness, SIZER, random.Random(7), GAParams(population=20, generations=60))
    # at most floor(21 / 4) = 5 replicas fit in the devices' 21 units; the GA gets all five
    assert result.key[0] == -5.0


def test_polish_reaches_a_local_optimum() -> None:
    start = Individual(tuple(range(len(FREE))), SIZER.minimal(list(range(len(FREE)))))
    best, key = polish(start, fitness(start), fitness, max_evals=10_000)
    assert key <= fitness(start) and fitness(best) == key
    again, key2 = polish(best, key, fitness, max_evals=10_000)
    assert (again, key2) == (best, key)  # nothing in the neighbourhood improves


def test_polish_neighbours_keep_every_device_and_include_splits_and_new_replicas() -> None:
    # replicas (0, 1, 2), (3,); device 4 unused
    ind = Individual((0, 1, 2, 3, 4), (3, 1))
    around = list(_neighbours(ind))
    assert all(valid(x, 5) for x in around)  # a split or a new replica once dropped the unused devices
    groupings = {(x.canonical, tuple(sorted(x.unused))) for x in around}
    assert (((0,), (1, 2), (3,)), (4,)) in groupings  # split (0, 1, 2) after its first device
    assert (((0, 1), (2,), (3,)), (4,)) in groupings  # ... after its second
    assert (((0, 1, 2), (3,), (4,)), ()) in groupings  # the unused device as a replica of its own
    assert (((0, 2), (1,), (3,)), (4,)) in groupings  # device 1 leaves its replica for its own


def test_polish_takes_a_move_that_pays_only_with_a_new_pipeline_order() -> None:
    start = Individual((0, 1, 2, 3), (2, 1))  # replicas (0, 1), (2,); device 3 unused
    best = Individual((3, 0, 2, 1), (2, 1))  # 1 swapped for 3, and 3 first: (3, 0), (2,)
    assert ((0, 3), (2,)) in [x.groups for x in _neighbours(start)]  # the plain swap ...

    def fitness(ind: Individual) -> tuple[float, float]:  # ... is worse than the start
        return {start.canonical: (0.0, 1.0), best.canonical: (0.0, 0.0)}.get(ind.canonical, (0.0, 2.0))

    found, key = polish(start, fitness(start), fitness, max_evals=1000)
    assert key == (0.0, 0.0) and found.canonical == best.canonical


def test_the_other_elites_are_polished_from_what_the_best_ones_search_leaves() -> None:
    best = Individual((0, 1, 2, 3), (2, 1))  # a local optimum: every neighbour is worse
    second = Individual((2, 3, 0, 1), (1, 1))
    near_best = {x.canonical for x in _neighbours(best)}
    target = next(x for x in _neighbours(second) if x.canonical not in near_best | {best.canonical})
    keys = {best.canonical: (0.0, 1.0), second.canonical: (0.0, 2.0), target.canonical: (0.0, 0.0)}

    def fitness(ind: Individual) -> tuple[float, float]:
        return keys.get(ind.canonical, (0.0, 5.0))

    elites = [(best, (0.0, 1.0)), (second, (0.0, 2.0))]
    found, key = _polish_elites(elites, fitness, max_evals=10_000)
    assert key == (0.0, 0.0) and found.canonical == target.canonical
    # one budget: what the best one's search spends is not there for the others
    spent = len(list(_neighbours(best)))
    assert _polish_elites(elites, fitness, max_evals=spent) == (best, (0.0, 1.0))


def test_gains_below_min_gain_do_not_extend_the_run() -> None:
    """Latency tie-breaks that improve by a hair (here < 1e-6 relative) are kept as the best
    but do not reset the patience count at min_gain 1e-3; at min_gain 0 every better best does,
    and a better objective always does."""

    def tiny(ind: Individual) -> tuple[float, float]:
        return 0.0, 1.0 + 1e-7 * sum(abs(x - i) for i, x in enumerate(ind.perm))

    runs = {
        gain: evolve(
            len(FREE), tiny, SIZER, random.Random(2), GAParams(population=10, patience=5, min_gain=gain)
        )
        for gain in (1e-3, 0.0)
    }
    assert runs[1e-3].generations == 5
    assert runs[0.0].generations > 5
    assert runs[0.0].key <= runs[1e-3].key
    # the same steps in the objective are gains of any size: the run is the min_gain 0 one
    swapped = [
        evolve(
            len(FREE),
            lambda ind: tiny(ind)[::-1],
            SIZER,
            random.Random(2),
            GAParams(population=10, patience=5, min_gain=gain),
        )
        for gain in (1e-3, 0.0)
    ]
    assert swapped[0] == swapped[1] and swapped[0].generations == runs[0.0].generations

"""Genetic search over device groupings (the method's outer loop).

Encoding, as in the method: chromosome 1 is a permutation of all devices (also each replica's
pipeline order), chromosome 2 the number of devices in each replica, taken in turn from the
permutation. Devices after the last replica are explicitly unused (the plan lists them); e.g. 7
devices with sizes (3, 1, 2) form replicas perm[0:3], perm[3:4], perm[4:6] and leave perm[6].

Operators: crossover of both chromosomes at once, with repair: a run of whole replicas of one
parent is kept, the other devices follow in the other parent's order and replica boundaries
(each device appears once by construction), then a memory repair (`Sizer.repair`: a replica short
of memory takes the next devices in the permutation). We keep whole replicas rather than cut the
two chromosomes independently (as an order crossover would): replicas are the building blocks
of a good grouping, a child then shares most of its replicas with its parents, and their DP
results are already cached, which is what makes large clusters affordable. About 30% of children
mutate, by one of the method's four operators: swap two devices; regenerate the tail of the size
vector; regenerate the whole size vector; regenerate both chromosomes. New size vectors come from
`Sizer.sample`, which draws replicas that can hold the model (a random memory margin over the
minimum), so the search spends its budget on feasible groupings. This memory awareness is our
addition to the method.

Selection: size-3 tournaments over the current population together with the elite archive (the
best individuals ever seen), so elites from earlier generations are kept and also bred with the
current generation. A child that repeats a grouping already in the new generation is replaced by
a random individual (immigrant), so a converged population keeps exploring. Deterministic for a
given `random.Random`. Stops after `patience` generations without a gain (a better objective,
or at an equal objective a latency tie-break better than at the last gain by the relative
`min_gain`; smaller latency steps are kept but do not extend the run), or after `generations`;
then `polish` (a local search, our addition) settles the elites, best first, from one budget
(`polish_evals`): on large clusters the best one's search spends all of it.

Fitness is a black box `Individual -> key` (lower is better, `INFEASIBLE` for groupings that do
not work); the caller caches it, and evaluates the groups inside with its own DP cache.

~330 lines: the GA and its final local search share the encoding and the move set; apart they
would pass `Individual` internals back and forth.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Key = tuple[float, float]
INFEASIBLE: Key = (float("inf"), float("inf"))
REORDER_MAX = 4  # polish re-orders changed replicas of up to this many devices (4! = 24 orders)


@dataclass(frozen=True, slots=True)
class GAParams:
    """Search budget. The defaults meet the planning-time targets of benchmarks/bench_planner.py
    (7 devices < 2 s, 256 devices < 120 s on a 2-core box) and find the exhaustive optimum
    (objective and predicted latency) on 100 of 100 random 5-7 device clusters with MIXED off,
    98 of 100 with MIXED on (benchmarks/RESULTS.md, issue 14)."""

    population: int = 40
    generations: int = 200
    patience: int = 30  # stop after this many generations without a gain ...
    min_gain: float = 1e-3  # ... a latency tie-break step counts from this relative size (0: any)
    elites: int = 4
    mutation_rate: float = 0.3
    tournament: int = 3
    polish_evals: int = 1500  # budget of the final local searches (see `_polish_elites`)


@dataclass(frozen=True, slots=True)
class Individual:
    perm: tuple[int, ...]  # device indices in pipeline order
    sizes: tuple[int, ...]  # devices per replica; sum(sizes) <= len(perm), the rest unused

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        out, pos = [], 0
        for s in self.sizes:
            out.append(self.perm[pos : pos + s])
            pos += s
        return tuple(out)

    @property
    def unused(self) -> tuple[int, ...]:
        return self.perm[sum(self.sizes) :]

    @property
    def canonical(self) -> tuple[tuple[int, ...], ...]:
        """The grouping itself: replicas in any order are the same deployment."""
        return tuple(sorted(self.groups))


class Sizer(Protocol):
    """Memory-aware size vectors for a sequence of devices (indices, in pipeline order)."""

    def sample(self, devices: Sequence[int], rng: random.Random) -> tuple[int, ...]: ...

    def repair(self, devices: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]: ...


@dataclass(frozen=True, slots=True)
class GAResult:
    best: Individual
    key: Key
    generations: int
    history: tuple[Key, ...] = field(default=())  # best key after each generation


def evolve(
    n_devices: int,
    fitness: Callable[[Individual], Key],
    sizer: Sizer,
    rng: random.Random,
    params: GAParams = GAParams(),
    *,
    seeds: Sequence[Individual] = (),
    progress: Callable[[int, int], None] | None = None,
) -> GAResult:
    """Minimise `fitness` over groupings of `n_devices` devices."""
    pop = list(seeds)[: params.population]
    while len(pop) < params.population:
        pop.append(_random_individual(n_devices, sizer, rng))
    keys = [fitness(ind) for ind in pop]
    archive = _elites(pop, keys, params.elites)
    best_key = archive[0][1]
    history = [best_key]
    stale = 0
    gained = best_key  # the best at the last gain
    generation = 0
    for generation in range(1, params.generations + 1):
        pool = list(zip(pop, keys, strict=True)) + archive
        children = [ind for ind, _ in archive]
        seen = {ind.canonical for ind in children}
        while len(children) < params.population:
            a = _tournament(pool, params.tournament, rng)
            b = _tournament(pool, params.tournament, rng)
            child = _crossover(a, b, sizer, rng)
            if rng.random() < params.mutation_rate:
                child = _mutate(child, sizer, rng)
            if child.canonical in seen:  # a converged population explores no more: immigrate
                child = _random_individual(n_devices, sizer, rng)
            seen.add(child.canonical)
            children.append(child)
        pop = children
        keys = [fitness(ind) for ind in pop]
        archive = _elites(pop + [ind for ind, _ in archive], keys + [k for _, k in archive], params.elites)
        if archive[0][1] < best_key:
            best_key = archive[0][1]
        if _gain(best_key, gained, params.min_gain):
            gained, stale = best_key, 0
        else:
            stale += 1
        history.append(best_key)
        if progress:
            progress(generation, params.generations)
        if stale >= params.patience:
            break
    best, best_key = _polish_elites(archive, fitness, params.polish_evals)
    history.append(best_key)
    return GAResult(best, best_key, generation, tuple(history))


def _gain(new: Key, old: Key, margin: float) -> bool:
    """Whether `new` is a gain over `old`: any better objective, or at an equal objective a
    latency tie-break better by the relative `margin` (anything finite beats inf)."""
    if new[0] != old[0]:
        return new[0] < old[0]
    return new[1] < old[1] and (not math.isfinite(old[1]) or old[1] - new[1] > margin * abs(old[1]))


def _polish_elites(
    archive: Sequence[tuple[Individual, Key]], fitness: Callable[[Individual], Key], max_evals: int
) -> tuple[Individual, Key]:
    """`polish` the elites, best first, from one budget of `max_evals`: on a large cluster the
    best one's local search spends it all (the same cost as polishing it alone); on a small one
    it reaches a local optimum early and the rest polish the other elites, whose local optima
    may be better (a second basin the best one's moves cannot leave in one step)."""
    best, best_key = archive[0]
    left = max_evals
    for ind, key in archive:
        if left <= 0:
            break
        ind, key, used = _local_search(ind, key, fitness, left)
        left -= used
        if key < best_key:
            best, best_key = ind, key
    return best, best_key


def polish(
    ind: Individual, key: Key, fitness: Callable[[Individual], Key], max_evals: int
) -> tuple[Individual, Key]:
    """First-improvement local search from the GA's best (our addition to the method): the GA
    finds the right region, this settles the last device moves it tends to miss. Neighbours, in
    a fixed order: swap two devices (across replicas, inside one, or with an unused device);
    move one device to another position, replica, a new replica of its own, or the unused set
    (moving it to another replica also in a variant that retires the rest of its old replica);
    retire a whole replica (its devices unused); merge two replicas; split one in two. Then the
    same moves again, each with every other pipeline order of the replicas whose devices it
    changed (`_reordered`). Stops at a local optimum or after `max_evals`."""
    ind, key, _ = _local_search(ind, key, fitness, max_evals)
    return ind, key


def _local_search(
    ind: Individual, key: Key, fitness: Callable[[Individual], Key], max_evals: int
) -> tuple[Individual, Key, int]:
    """`polish`, and the evaluations it used."""
    evals = 0
    improved = True
    while improved and evals < max_evals:
        improved = False
        for cand in _neighbours(ind):
            if evals >= max_evals:
                break
            evals += 1
            k = fitness(cand)
            if k < key:
                ind, key, improved = cand, k, True
                break
    return ind, key, evals


def _neighbours(ind: Individual) -> Iterator[Individual]:
    """The moves, then the moves with their changed replicas re-ordered. A move that gives a
    replica other devices often pays only in another pipeline order (which devices hold the
    embedding and the LM head, which links the hops use), and the order that was best for the
    old devices makes the move look worse: one step of a plain local search cannot take both."""
    yield from _moves(ind)
    before = set(ind.groups)
    for cand in _moves(ind):
        changed = [k for k, g in enumerate(cand.groups) if g not in before and 1 < len(g) <= REORDER_MAX]
        if changed:
            yield from _reordered(cand, changed)


def _reordered(ind: Individual, changed: Sequence[int]) -> Iterator[Individual]:
    """`ind` with replicas `changed` in every combination of pipeline orders but its own."""
    groups = ind.groups
    orders = [itertools.permutations(groups[k]) if k in changed else (groups[k],) for k in range(len(groups))]
    for combo in itertools.product(*orders):
        if combo != groups:
            yield Individual(tuple(x for g in combo for x in g) + ind.unused, ind.sizes)


def _moves(ind: Individual) -> Iterator[Individual]:
    buckets = [list(g) for g in ind.groups] + [list(ind.unused)]  # the last bucket: unused
    last = len(buckets) - 1

    def make(bs: list[list[int]]) -> Individual:
        # the unused bucket is always the last one (a split or a new replica adds one before it)
        groups = [b for b in bs[:-1] if b]
        return Individual(tuple(x for g in groups for x in g) + tuple(bs[-1]), tuple(len(g) for g in groups))

    slots = [(b, i) for b, bucket in enumerate(buckets) for i in range(len(bucket))]
    for (b1, i1), (b2, i2) in itertools.combinations(slots, 2):
        if b1 == b2 == last:
            continue
        bs = [list(b) for b in buckets]
        bs[b1][i1], bs[b2][i2] = bs[b2][i2], bs[b1][i1]
        yield make(bs)
    for b1, i1 in slots:
        for b2 in range(len(buckets) + 1):  # len(buckets): a new replica of its own
            if b2 == b1 == last or (b2 == len(buckets) and len(buckets[b1]) == 1 and b1 != last):
                continue
            bs = [list(b) for b in buckets]
            dev = bs[b1].pop(i1)
            if b2 == len(buckets):
                bs.insert(last, [dev])
                yield make(bs)
                continue
            for j in range(1 if b2 == last else len(bs[b2]) + 1):
                if b2 == b1 and j == i1:
                    continue
                moved = [list(b) for b in bs]
                moved[b2].insert(j, dev)
                yield make(moved)
                if b1 != last and b2 != b1 and b2 != last and moved[b1]:
                    # the replica it left may no longer hold the model: retire the rest too
                    moved[last] = moved[last] + moved[b1]
                    moved[b1] = []
                    yield make(moved)
    for g in range(last):  # retire a whole replica
        bs = [list(b) for b in buckets]
        bs[last] = bs[last] + bs[g]
        bs[g] = []
        yield make(bs)
    for g1, g2 in itertools.permutations(range(last), 2):
        bs = [list(b) for b in buckets]
        bs[g1] = bs[g1] + bs[g2]
        bs[g2] = []
        yield make(bs)
    for g in range(last):
        for cut in range(1, len(buckets[g])):
            bs = [list(b) for b in buckets]
            bs[g : g + 1] = [buckets[g][:cut], buckets[g][cut:]]
            yield make(bs)


def _elites(pop: Sequence[Individual], keys: Sequence[Key], n: int) -> list[tuple[Individual, Key]]:
    seen: set[Individual] = set()
    out = []
    for i in sorted(range(len(pop)), key=lambda i: keys[i]):
        if pop[i] not in seen:
            seen.add(pop[i])
            out.append((pop[i], keys[i]))
            if len(out) == n:
                break
    return out


def _tournament(pool: Sequence[tuple[Individual, Key]], size: int, rng: random.Random) -> Individual:
    picks = [pool[rng.randrange(len(pool))] for _ in range(size)]
    return min(picks, key=lambda p: p[1])[0]


def _random_individual(n: int, sizer: Sizer, rng: random.Random) -> Individual:
    perm = list(range(n))
    rng.shuffle(perm)
    return Individual(tuple(perm), sizer.sample(perm, rng))


def _crossover(a: Individual, b: Individual, sizer: Sizer, rng: random.Random) -> Individual:
    """Group-preserving order crossover: a run of whole replicas of `a` is kept as it is, the
    other devices follow in `b`'s order with `b`'s replica boundaries (replicas that lost devices
    to the kept run shrink), then the memory repair grows any replica left short."""
    kept_groups = a.groups
    if not kept_groups:
        return Individual(b.perm, sizer.repair(b.perm, b.sizes))
    start = rng.randrange(len(kept_groups))
    kept = kept_groups[start : rng.randint(start + 1, len(kept_groups))]
    taken = {x for g in kept for x in g}
    rest = [tuple(x for x in g if x not in taken) for g in b.groups]
    rest = [g for g in rest if g]
    unused = tuple(x for x in b.unused if x not in taken)
    perm = tuple(x for g in (*kept, *rest) for x in g) + unused
    return Individual(perm, sizer.repair(perm, [len(g) for g in (*kept, *rest)]))


def _mutate(ind: Individual, sizer: Sizer, rng: random.Random) -> Individual:
    op = rng.randrange(4)
    n = len(ind.perm)
    if op == 0 and n > 1:  # swap two devices
        perm = list(ind.perm)
        i, j = rng.sample(range(n), 2)
        perm[i], perm[j] = perm[j], perm[i]
        return Individual(tuple(perm), sizer.repair(perm, ind.sizes))
    if op == 1:  # regenerate the tail of the size vector
        cut = rng.randint(0, len(ind.sizes))
        head = ind.sizes[:cut]
        return Individual(ind.perm, head + sizer.sample(ind.perm[sum(head) :], rng))
    if op == 2:  # regenerate the whole size vector
        return Individual(ind.perm, sizer.sample(ind.perm, rng))
    return _random_individual(n, sizer, rng)  # regenerate both

"""Exhaustive grouping search: the oracle the GA is checked against (clusters of <= 7 devices).

Enumerates every grouping the GA can express: every set of unused devices, every partition of
the others into replicas, and every pipeline order inside each replica (order matters: links,
and which devices hold the embedding and the LM head). Each set partition is produced once (the
lowest-numbered remaining device either stays unused or opens the next replica). Replicas that
cannot hold the model prune the branch early. Each arrangement's every role vector is scored by
the planner's own scoring (`roles.score_batch`, with the KV hand-off limits between the
arrangement's replicas), so the oracle and the GA optimise the same function.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from e2llm.plan.role_scoring import ReplicaArrays, ReplicaRates, role_vectors, score_batch

MAX_DEVICES = 7
_BATCH = 4096  # arrangements collected per role pattern before they are scored
_CELLS = 2_000_000  # numpy cells per scoring call
_FIELDS = ("p", "lp", "d", "ld", "m", "lm")

Key = tuple[float, float]
Arrangement = tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class ExhaustiveResult:
    groups: Arrangement
    key: Key
    arrangements: int  # groupings whose every replica holds the model


def groupings(n: int, fits: Callable[[tuple[int, ...]], bool]) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every arrangement of devices 0..n-1 into ordered replicas (the rest unused) in which
    every replica passes `fits` (a test on the unordered device set)."""

    def rec(
        remaining: tuple[int, ...], acc: tuple[tuple[int, ...], ...]
    ) -> Iterator[tuple[tuple[int, ...], ...]]:
        if not remaining:
            if acc:
                yield acc
            return
        first, rest = remaining[0], remaining[1:]
        yield from rec(rest, acc)  # `first` unused
        for k in range(len(rest) + 1):
            for others in itertools.combinations(rest, k):
                members = (first, *others)
                if not fits(members):
                    continue
                left = tuple(x for x in rest if x not in others)
                for order in itertools.permutations(members):
                    yield from rec(left, (*acc, order))

    return rec(tuple(range(n)), ())


def search_exhaustive(
    n: int,
    fits: Callable[[tuple[int, ...]], bool],
    replicas_of: Callable[[Arrangement], tuple[Sequence[ReplicaRates], np.ndarray | None] | None],
    interval_s: float,
    objective: str,
) -> ExhaustiveResult | None:
    """Best grouping of devices 0..n-1. `replicas_of` gives an arrangement's replica rates and
    hand-off limits (None: a replica cannot hold the model). Every role vector of every
    arrangement is scored by `roles.score_batch`, many arrangements at once; arrangements with
    equal rates and no hand-off limit (identical devices swapped) are scored once. Ties keep the
    first in (replica count, enumeration) order, so the result is deterministic."""
    pending: dict[
        tuple[tuple[int, ...], ...], list[tuple[int, Arrangement, ReplicaArrays, np.ndarray | None]]
    ] = {}
    seen: set[Hashable] = set()
    best: tuple[Key, int, int, Arrangement] | None = None
    count = 0

    def flush(allowed: tuple[tuple[int, ...], ...]) -> None:
        nonlocal best
        items = pending.pop(allowed)
        codes = role_vectors(allowed)
        r = len(allowed)
        for start in range(0, len(items), _chunk(len(codes), r, any(kv is not None for *_, kv in items))):
            chunk = items[start : start + _chunk(len(codes), r, any(kv is not None for *_, kv in items))]
            arrays = [
                np.array([getattr(a, f) for _, _, a, _ in chunk]) for f in ("p", "lp", "d", "ld", "m", "lm")
            ]
            kv = None
            if any(k is not None for *_, k in chunk):
                kv = np.array([np.full((r, r), np.inf) if k is None else k for *_, k in chunk])
            obj, lat, *_ = score_batch(codes, *arrays, interval_s=interval_s, objective=objective, kv=kv)
            for row, (order, arrangement, _, _) in enumerate(chunk):
                pick = int(np.lexsort((lat[row], obj[row]))[0])
                key = (float(obj[row, pick]), float(lat[row, pick]))
                if not np.isfinite(key[0]):
                    continue
                cand = (key, len(arrangement), order, arrangement)
                if best is None or cand[:3] < best[:3]:
                    best = cand

    for order, arrangement in enumerate(groupings(n, fits)):
        got = replicas_of(arrangement)
        if got is None:
            continue
        count += 1
        rates, kv = got
        if kv is None:
            identity = tuple(sorted((r.prefill_rps, r.prefill_latency_s, r.decode, r.mixed) for r in rates))
            if identity in seen:
                continue
            seen.add(identity)
        a = ReplicaArrays.of(rates)
        items = pending.setdefault(a.allowed, [])
        items.append((order, arrangement, a, kv))
        if len(items) >= _BATCH:
            flush(a.allowed)
    for allowed in list(pending):
        flush(allowed)
    if best is None:
        return None
    return ExhaustiveResult(best[3], best[0], count)


def _chunk(rows: int, replicas: int, links: bool) -> int:
    """Arrangements per scoring call: bounded numpy temporaries (the hand-off caps are R x R)."""
    per = rows * replicas * (replicas if links else 1)
    return max(1, _CELLS // per)

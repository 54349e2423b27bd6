"""Exhaustive grouping search: the oracle the GA is checked against (clusters of <= 7 devices).

Enumerates every grouping the GA can express: every set of unused devices, every partition of
the others into replicas, and every pipeline order inside each replica (order matters: links,
and which devices hold the embedding and the LM head). Each set partition is produced once (the
lowest-numbered remaining device either stays unused or opens the next replica). Replicas that
cannot hold the model prune the branch early. Group evaluations are cached by signature (see
`GroupEvaluator`), so identical devices cost one DP, and roles are chosen by enumerating every
PREFILL/DECODER split (each decoder at its best-rate concurrency, which is optimal for the
objective; see `roles`), vectorised over the 2^R splits.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from e2llm.plan.roles import predicted_latency, sort_key

MAX_DEVICES = 7
_CHUNK = 4096  # arrangements scored per vectorised batch

Key = tuple[float, float]
# (p, prefill latency, d, decode latency, can decode) of one replica
Rates = tuple[float, float, float, float, bool]


@dataclass(frozen=True, slots=True)
class ExhaustiveResult:
    groups: tuple[tuple[int, ...], ...]
    prefill: tuple[bool, ...]
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


@functools.cache
def _role_masks(r: int) -> np.ndarray:
    """All 2^r PREFILL masks (rows) except all-prefill and all-decode."""
    rows = [m for m in itertools.product((True, False), repeat=r) if any(m) and not all(m)]
    return np.array(rows, dtype=bool).reshape(len(rows), r)


def best_roles(
    rates: Sequence[Rates], interval_s: float, objective: str
) -> tuple[tuple[bool, ...], Key] | None:
    """Exact role split of one set of replicas by enumeration; None without a valid split."""
    found = _best_roles_many([rates], interval_s, objective)[0]
    return None if found is None else (found[0], found[1])


def _best_roles_many(
    batch: Sequence[Sequence[Rates]], interval_s: float, objective: str
) -> list[tuple[tuple[bool, ...], Key] | None]:
    """`best_roles` of many arrangements with the same replica count R, vectorised over
    arrangements x 2^R splits. Ties go to the first split in enumeration order."""
    r = len(batch[0])
    if r < 2:
        return [None] * len(batch)
    masks = _role_masks(r)  # (S, R)
    x = np.array(batch, dtype=float)  # (A, R, 5)
    p, lp, d, ld, can = (x[:, :, i] for i in range(5))
    pm, dm = masks.astype(float), (~masks).astype(float)
    psum, dsum = p @ pm.T, d @ dm.T  # (A, S)
    ok = (can[:, None, :] > 0) | masks[None, :, :]  # decoders must be able to decode
    ok = ok.all(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if objective == "bottleneck":
            obj = np.maximum(0.0, np.maximum(1.0 / psum, 1.0 / dsum) - interval_s)
        else:
            obj = -np.minimum(psum, dsum)
        lat = predicted_latency(psum, (p * lp) @ pm.T, dsum, (d * ld) @ dm.T, interval_s)
    obj = np.where(ok, np.round(obj, 9), np.inf)
    lat = np.where(ok, lat, np.inf)
    out: list[tuple[tuple[bool, ...], Key] | None] = []
    for a in range(len(batch)):
        pick = int(np.lexsort((lat[a], obj[a]))[0])
        if not ok[a, pick]:
            out.append(None)
        else:
            out.append(
                (tuple(bool(v) for v in masks[pick]), sort_key(float(obj[a, pick]), float(lat[a, pick])))
            )
    return out


def search_exhaustive(
    n: int,
    fits: Callable[[tuple[int, ...]], bool],
    rates_of: Callable[[tuple[int, ...]], Rates | None],
    interval_s: float,
    objective: str,
) -> ExhaustiveResult | None:
    """Best grouping of devices 0..n-1; `rates_of` evaluates one ordered group (None: does not
    fit). Arrangements with equal rates (identical devices swapped) are scored once; ties keep
    the first in (replica count, enumeration) order, so the result is deterministic."""
    pending: dict[int, list[tuple[tuple[tuple[int, ...], ...], tuple[Rates, ...]]]] = {}
    seen: set[tuple[Rates, ...]] = set()
    count = 0
    for arrangement in groupings(n, fits):
        rates = []
        for g in arrangement:
            x = rates_of(g)
            if x is None:
                break
            rates.append(x)
        else:
            count += 1
            canon = tuple(sorted(rates))
            if canon not in seen:
                seen.add(canon)
                pending.setdefault(len(rates), []).append((arrangement, tuple(rates)))
    best: tuple[Key, int, tuple[tuple[int, ...], ...], tuple[bool, ...]] | None = None
    order = 0
    for _, items in sorted(pending.items()):
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            scored = _best_roles_many([r for _, r in chunk], interval_s, objective)
            for (arrangement, _), found in zip(chunk, scored, strict=True):
                order += 1
                if found and (best is None or found[1] < best[0]):
                    best = (found[1], order, arrangement, found[0])
    if best is None:
        return None
    return ExhaustiveResult(best[2], best[3], best[0], count)

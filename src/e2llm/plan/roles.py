"""Roles and decode concurrency: which replicas do PREFILL, DECODER or MIXED, and at what batch.

Inputs are per-replica rates (requests per second a replica sustains in each role) and latencies,
and optionally the KV hand-off capacity of every PREFILL -> DECODER pair (`kv_links`).

The capacity model and the scores: `plan.role_scoring`.

Concurrency: a decoder's (or MIXED replica's) rate only ever helps both objectives, so each runs
the concurrency with the highest rate among those keeping each request at the speed floor
(computed by the caller; ties go to the lower latency).

Split: choosing roles is a partition problem (NP-hard in general). `assign_roles` is exact where
that is cheap: with at most `EXACT_ROWS` role vectors (every replica's allowed roles multiplied
out: 2^R, or 3^R where replicas may be MIXED; e.g. R <= 7 with MIXED, R <= 12 without) it scores
all of them at once with numpy, in the same order and with the same scoring as the exhaustive
grouping search, so both pick the same split. Above that it is a polynomial heuristic:
1. sort replicas by prefill-vs-decode efficiency (p_i / d_i) and try every split point of that
   order (the fractional optimum of the PREFILL/DECODER split lies on one), and the all-MIXED
   vector where every replica can be MIXED;
2. best-improvement local search from the best start: change any one replica's role, or any two
   (<= 16 replicas), or swap a PREFILL and a DECODER (more replicas, at most 8 passes); each
   neighbour scored from the totals of the current vector plus its change (`change_totals`);
3. with link limits, the search runs on the replicas' own rates, then again with each prefill
   rate capped by its hand-off capacity under the split found (two rounds); the best by the true
   score wins.
`assign_roles_exhaustive` enumerates every role set and every decoder concurrency (the method's
enumeration), kept as the test oracle.

~310 lines: the exact split, the heuristic and its local search are one search over the same
role vectors (the scores are in `role_scoring`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence

import numpy as np

from e2llm.plan.role_scoring import (
    DECODER_CODE,
    MIXED_CODE,
    OBJECTIVES,
    PREFILL_CODE,
    DecodeChoice,
    KvSource,
    ReplicaArrays,
    ReplicaRates,
    RoleAssignment,
    change_totals,
    handoff_caps,
    role_totals,
    role_values,
    role_vectors,
    score_roles,
    score_totals,
    swap_totals,
)
from e2llm.plan.types import Role

EXACT_ROWS = 4096  # role vectors scored at once by the exact path ...
EXACT_CELLS_PER_ROW = 32  # ... and with link limits at most 32 x 4096 (rows x R x R) cells: R <= 7
_CODES = {PREFILL_CODE: Role.PREFILL, DECODER_CODE: Role.DECODER, MIXED_CODE: Role.MIXED}
_MAX_PASSES = 64
_MAX_PASSES_LARGE = 8  # many replicas: the split-point start is already close; bound GA time
_PAIRS_MAX_R = 16  # local search changes two replicas at once up to this many replicas
_KV_ROUNDS = 2


def _rows(allowed: tuple[tuple[int, ...], ...]) -> int:
    n = 1
    for roles in allowed:
        n *= len(roles)
    return n


# --- the search ------------------------------------------------------------------------------
def assign_roles(
    replicas: Sequence[ReplicaRates],
    interval_s: float,
    objective: str,
    kv: np.ndarray | KvSource | None = None,
    *,
    exact_rows: int = EXACT_ROWS,
) -> RoleAssignment | None:
    """Role + concurrency choice; None when no role vector is a valid plan. `kv[i, j]`: the
    hand-off capacity (requests/s) from replica i as PREFILL to replica j as DECODER (inf: no
    limit; None: no limits at all), or a function giving that matrix for the PREFILL rows and
    DECODER columns asked (inf elsewhere), so that the heuristic asks only for its split's."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    if not replicas:
        return None
    a = ReplicaArrays.of(replicas)
    n = len(replicas)
    source: KvSource | None
    if kv is None or callable(kv):
        source = kv
    else:
        matrix = kv
        source = None if np.isinf(matrix).all() else (lambda rows, cols: matrix)
    if source is not None and source(range(n), ()) is None:
        source = None  # no PREFILL replica's hand-off can bind whatever it pairs with

    def limits(rows: Iterable[int], cols: Iterable[int]) -> np.ndarray | None:
        m = source(rows, cols) if source is not None else None
        return None if m is None or np.isinf(m).all() else m

    n_rows = _rows(a.allowed)
    # with link limits the exact path's temporaries are rows x R x R (`handoff_caps`)
    if n_rows <= exact_rows and (source is None or n_rows * n * n <= exact_rows * EXACT_CELLS_PER_ROW):
        codes = role_vectors(a.allowed)
        full = limits(range(n), range(n))
        obj, lat, *_ = score_roles(codes, a, interval_s, objective, full)
        pick = int(np.lexsort((lat, obj))[0])
        if not np.isfinite(obj[pick]):
            return None
        return _assignment(codes[pick], replicas, a, interval_s, objective, full)
    best: tuple[tuple[float, float], np.ndarray, np.ndarray | None] | None = None
    search = a
    for _ in range(_KV_ROUNDS if source is not None else 1):
        found = _heuristic(search, interval_s, objective)
        if found is None:
            break
        pre, dec = np.flatnonzero(found == PREFILL_CODE), np.flatnonzero(found == DECODER_CODE)
        # every replica's hand-off to this split's decoders: the PREFILL rows score the split,
        # the others cap the prefill rates the next round searches with
        m = limits(range(len(found)), dec.tolist()) if source is not None and len(pre) and len(dec) else None
        obj, lat, *_ = score_roles(found[None, :], a, interval_s, objective, m)
        key = (float(obj[0]), float(lat[0]))
        if best is None or key < best[0]:
            best = (key, found, m)
        if m is None:
            break  # no link limits the split found: the search saw its true rates
        d_sum = np.array([[a.d[dec].sum()]])
        caps = handoff_caps(found[None, :] == DECODER_CODE, a.d[None, :], d_sum, m[None])[0, 0]
        if (caps >= a.p).all():
            break  # the next round would search the same rates
        search = a.with_prefill(np.minimum(a.p, caps))
    if best is None or not np.isfinite(best[0][0]):
        return None
    return _assignment(best[1], replicas, a, interval_s, objective, best[2])


def _heuristic(a: ReplicaArrays, interval_s: float, objective: str) -> np.ndarray | None:
    """Split-point starts (and all-MIXED), then best-improvement local search."""
    n = len(a.p)
    can_d = a.d > 0
    starts = []
    ratio = np.where(can_d, a.p / np.where(can_d, a.d, 1.0), np.inf)
    order = np.lexsort((np.arange(n), -ratio))  # prefill-leaning replicas first
    for s in range(1, n):
        if can_d[order[s:]].all():
            codes = np.full(n, DECODER_CODE, dtype=np.int8)
            codes[order[:s]] = PREFILL_CODE
            starts.append(codes)
    if all(MIXED_CODE in roles for roles in a.allowed):
        starts.append(np.full(n, MIXED_CODE, dtype=np.int8))
    if not starts:
        return None
    obj, lat, *_ = score_roles(np.array(starts), a, interval_s, objective)
    pick = int(np.lexsort((lat, obj))[0])
    return _improve(starts[pick], a, interval_s, objective)


def _improve(codes: np.ndarray, a: ReplicaArrays, interval_s: float, objective: str) -> np.ndarray:
    """Best-improvement local search over role vectors (`_neighbours`), stopping at a local
    optimum. Scored incrementally (`change_totals`), every neighbour in one `score_totals`
    call per pass; ties go to the first neighbour."""
    pairs = len(codes) <= _PAIRS_MAX_R
    values = role_values(a)
    for _ in range(_MAX_PASSES if pairs else _MAX_PASSES_LARGE):
        blocks, parts = _neighbours(codes, values, a.allowed, pairs=pairs)
        if not parts:
            break
        here, count = role_totals(codes, values)  # the first column: `codes` itself
        totals = np.concatenate([here, *(t for t, _ in parts)], axis=1)
        counts = np.concatenate([count, *(c for _, c in parts)], axis=1)
        obj, lat = score_totals(tuple(totals), tuple(counts), interval_s, objective)
        pick = int(np.lexsort((lat[1:], obj[1:]))[0])
        if (obj[pick + 1], lat[pick + 1]) >= (obj[0], lat[0]):
            break
        codes = codes.copy()
        for changes in blocks:
            if pick < len(changes[0][0]):
                for replica, role in changes:
                    codes[replica[pick]] = role[pick]
                break
            pick -= len(changes[0][0])
    return codes


Changes = tuple[tuple[np.ndarray, np.ndarray], ...]  # (replica, role) arrays, one entry per neighbour


def _neighbours(
    codes: np.ndarray, values: np.ndarray, allowed: tuple[tuple[int, ...], ...], *, pairs: bool
) -> tuple[list[Changes], list[tuple[np.ndarray, np.ndarray]]]:
    """Every vector one role change away; with `pairs` also two changes, else PREFILL<->DECODER
    swaps (a change of two that keeps both pools' sizes): the changes of each block of
    neighbours, and the totals of the non-empty blocks. In the order of the changes: replica,
    then role; pairs in `itertools.combinations` order; swaps by PREFILL, then DECODER."""
    replicas, roles, can_decode = _changes(allowed)
    keep = roles != codes[replicas]
    replica, role = replicas[keep], roles[keep]
    blocks: list[Changes] = [((replica, role),)]
    if pairs:
        first, second = np.triu_indices(len(replica), 1)
        apart = replica[first] != replica[second]
        first, second = first[apart], second[apart]
        blocks.append(((replica[first], role[first]), (replica[second], role[second])))
        parts = [change_totals(codes, values, b) for b in blocks if len(b[0][0])]
    else:
        pre = np.flatnonzero((codes == PREFILL_CODE) & can_decode)
        dec = np.flatnonzero(codes == DECODER_CODE)
        i, j = np.repeat(pre, len(dec)), np.tile(dec, len(pre))
        blocks.append(((i, np.full(len(i), DECODER_CODE)), (j, np.full(len(j), PREFILL_CODE))))
        parts = [change_totals(codes, values, blocks[0])] if len(replica) else []
        if len(i):
            parts.append(swap_totals(codes, values, pre, dec))
    return blocks, parts


@functools.cache
def _changes(allowed: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(replica, role) of every allowed role of every replica, and which replicas can decode."""
    pairs = [(i, r) for i, roles in enumerate(allowed) for r in roles]
    return (
        np.array([i for i, _ in pairs], dtype=np.intp),
        np.array([r for _, r in pairs], dtype=np.int8),
        np.array([DECODER_CODE in roles for roles in allowed]),
    )


def _assignment(
    codes: np.ndarray,
    replicas: Sequence[ReplicaRates],
    a: ReplicaArrays,
    interval_s: float,
    objective: str,
    kv: np.ndarray | None,
) -> RoleAssignment:
    obj, lat, p_sum, d_sum, m_sum = score_roles(codes[None, :], a, interval_s, objective, kv)
    conc = []
    for code, r in zip(codes, replicas, strict=True):
        if code == DECODER_CODE:
            conc.append(r.best.concurrency if r.best else 1)
        elif code == MIXED_CODE:
            conc.append(r.mixed.concurrency if r.mixed else 1)
        else:
            conc.append(1)
    return _make(
        codes, tuple(conc), float(obj[0]), float(lat[0]), float(p_sum[0]), float(d_sum[0]), float(m_sum[0])
    )


def _make(
    codes: np.ndarray | Sequence[int],
    conc: tuple[int, ...],
    obj: float,
    lat: float,
    p_sum: float,
    d_sum: float,
    m_sum: float,
) -> RoleAssignment:
    codes = [int(c) for c in codes]
    pooled = PREFILL_CODE in codes and DECODER_CODE in codes
    mixed = tuple(c == MIXED_CODE for c in codes)
    idle = tuple(not pooled and c != MIXED_CODE for c in codes)
    return RoleAssignment(
        prefill=tuple(c == PREFILL_CODE for c in codes),
        concurrency=conc,
        objective=obj,
        latency_s=lat,
        prefill_rps=p_sum if pooled else 0.0,
        decode_rps=d_sum if pooled else 0.0,
        mixed=mixed if any(mixed) else (),
        mixed_rps=m_sum,
        idle=idle if any(idle) else (),
    )


def assign_roles_exhaustive(
    replicas: Sequence[ReplicaRates], interval_s: float, objective: str, *, every_concurrency: bool = True
) -> RoleAssignment | None:
    """The method's enumeration: every role vector, and (if `every_concurrency`) every
    combination of decoder concurrencies; otherwise each decoder at its best-rate concurrency.
    Exponential: an oracle for tests, not for the planner. No link limits."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    base = ReplicaArrays.of(replicas)
    best: tuple[tuple[float, float], RoleAssignment] | None = None
    for codes in role_vectors(base.allowed):
        decoders = [i for i, c in enumerate(codes) if c == DECODER_CODE]
        options: list[Sequence[DecodeChoice]] = [
            replicas[i].decode if every_concurrency else [c for c in (replicas[i].best,) if c]
            for i in decoders
        ]
        for combo in itertools.product(*options):
            d, ld = base.d.copy(), base.ld.copy()
            for i, c in zip(decoders, combo, strict=True):
                d[i], ld[i] = c.rate_rps, c.latency_s
            a = ReplicaArrays(base.p, base.lp, d, ld, base.m, base.lm, base.allowed)
            obj, lat, p_sum, d_sum, m_sum = score_roles(codes[None, :], a, interval_s, objective)
            key = (float(obj[0]), float(lat[0]))
            if not np.isfinite(key[0]) or (best is not None and key >= best[0]):
                continue
            it = iter(combo)
            conc = tuple(
                next(it).concurrency
                if c == DECODER_CODE
                else (replicas[i].mixed.concurrency if c == MIXED_CODE and replicas[i].mixed else 1)  # type: ignore[union-attr]
                for i, c in enumerate(codes)
            )
            best = (key, _make(codes, conc, *key, float(p_sum[0]), float(d_sum[0]), float(m_sum[0])))
    return None if best is None else best[1]

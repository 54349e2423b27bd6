"""Roles and decode concurrency: which replicas do PREFILL, which DECODE, and at what batch.

Inputs are per-replica rates (requests per second a replica sustains in each role) and latencies.
A phase's capacity is the SUM of its replicas' rates, as in the method; its time per request is
the inverse. Objectives (lower is better, ties broken by lower predicted latency):

- "bottleneck" (the method's): how far the slower phase's time per request exceeds the arrival
  interval, `max(0, 1/P - interval, 1/D - interval)` seconds, P and D the summed prefill and decode
  rates. Zero means both phases keep up; then latency decides.
- "max_rate": the highest sustainable request rate, `min(P, D)`, reported negated.

Predicted latency (the tie-break) is the mean per-request service time if requests spread over a
phase's replicas in proportion to their rates, sum(p_i * prefill_latency_i) / P +
sum(d_i * decode_latency_i) / D, plus each phase's queueing delay at the arrival rate
(`predicted_latency`). Without the queueing term, every plan that just keeps up scores 0 on the
bottleneck objective and the tie-break would pick the one with the fastest replicas and no
headroom, whose queues then grow with every burst; with it, headroom is worth its waiting time.

Concurrency: a decoder's summed capacity only ever helps both objectives, so each decoder runs
the concurrency with the highest rate among those keeping each request at the speed floor
(computed by the caller; ties go to the lower latency). The enumeration oracle below confirms
that choosing it independently loses nothing.

Split: maximising min(P, D) over role subsets is a two-way partition problem (NP-hard in general),
so no polynomial algorithm can be exact on every input; `assign_roles` is a polynomial heuristic
that is exact on every small case we tested (tests/plan/test_roles.py, thousands of random
instances of up to 9 replicas: one miss in 1000 at 6-9 replicas, by 1%):
1. sort replicas by prefill-vs-decode efficiency (p_i / d_i) and try every split point of that
   order: the fractional (LP) optimum lies on one, so the best is within one replica of it;
2. best-improvement local search from that split (and, for <= 12 replicas, from its mirror
   image): flip the roles of any 1-3 replicas at once (<= 12 replicas: O(R^3) per pass) or single
   moves and PREFILL<->DECODER swaps (more replicas: O(R^2) per pass, at most 8 passes).
All vectorised with numpy. `assign_roles_exhaustive` is the method's enumeration (2^R role sets x
every concurrency), kept as the test oracle.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from e2llm.plan.types import Objective

OBJECTIVES = tuple(Objective)
Num = TypeVar("Num", float, np.ndarray)
# Local-search passes (each strictly improves). Small cases run to a local optimum; with many
# replicas the split-point start is already within one replica of the fractional optimum and the
# remaining passes mostly polish the latency tie-break, so they are capped to bound GA time.
_MAX_PASSES = 64
_MAX_PASSES_LARGE = 8
_FLIP_K = 3  # local search flips up to this many replicas at once ...
_FLIP_K_MAX_R = 12  # ... while there are at most this many replicas (then moves and swaps)


@dataclass(frozen=True, slots=True)
class DecodeChoice:
    """One feasible decode concurrency of a replica (already meets the per-request speed floor)."""

    concurrency: int
    rate_rps: float  # requests per second: concurrency * tok/s per request / mean output tokens
    latency_s: float  # decode time of one request at this concurrency


@dataclass(frozen=True, slots=True)
class ReplicaRates:
    prefill_rps: float  # prompts per second in the PREFILL role
    prefill_latency_s: float  # prefill time of one prompt
    decode: tuple[DecodeChoice, ...] = ()  # empty: cannot be a DECODER
    best: DecodeChoice | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.decode:  # the highest rate, then the lower latency, then the smaller batch
            best = min(self.decode, key=lambda c: (-c.rate_rps, c.latency_s, c.concurrency))
            object.__setattr__(self, "best", best)

    def best_decode(self) -> DecodeChoice | None:
        return self.best


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    prefill: tuple[bool, ...]  # per replica: True = PREFILL, False = DECODER
    concurrency: tuple[int, ...]  # decoders: chosen concurrency; prefill replicas: 1
    objective: float
    latency_s: float
    prefill_rps: float
    decode_rps: float

    @property
    def key(self) -> tuple[float, float]:
        return sort_key(self.objective, self.latency_s)


def sort_key(objective: float, latency_s: float) -> tuple[float, float]:
    """Lexicographic key; objectives equal to 1e-9 (float noise between summation orders) tie."""
    return (round(objective, 9), latency_s)


def objective_value(kind: str, prefill_rps: float, decode_rps: float, interval_s: float) -> float:
    if kind == "bottleneck":
        slower = max(1.0 / prefill_rps, 1.0 / decode_rps)
        return max(0.0, slower - interval_s)
    if kind == "max_rate":
        return -min(prefill_rps, decode_rps)
    raise ValueError(f"unknown objective {kind!r}; choose from {OBJECTIVES}")


def _objective_array(kind: str, p: np.ndarray, d: np.ndarray, interval_s: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        if kind == "bottleneck":
            slower = np.maximum(1.0 / p, 1.0 / d)
            return np.maximum(0.0, slower - interval_s)
    return -np.minimum(p, d)


def predicted_latency(p_sum: Num, p_weighted: Num, d_sum: Num, d_weighted: Num, interval_s: float) -> Num:
    """Mean per-request latency (s): rate-weighted service time of each phase (`*_weighted` is
    sum(rate_i * latency_i)) plus each phase's queueing delay. The delay treats a phase as one
    M/D/1 server of its summed rate X at arrival rate lam = 1/interval: rho / (2 X (1 - rho)),
    rho = lam / X, infinite once rho >= 1. Works elementwise on numpy arrays."""
    lam = 1.0 / interval_s
    with np.errstate(divide="ignore", invalid="ignore"):
        service = p_weighted / p_sum + d_weighted / d_sum
        wait = _md1_wait(p_sum, lam) + _md1_wait(d_sum, lam)
    return service + wait


def _md1_wait(rate: Num, lam: float) -> Num:
    rho = lam / np.asarray(rate, dtype=float)
    wait = np.where(rho < 1.0, rho / (2.0 * np.asarray(rate, dtype=float) * (1.0 - rho)), np.inf)
    return float(wait) if np.ndim(wait) == 0 else wait  # type: ignore[return-value]


def assign_roles(
    replicas: Sequence[ReplicaRates], interval_s: float, objective: str
) -> RoleAssignment | None:
    """Polynomial role + concurrency choice; None unless >= 1 prefill and >= 1 decoder are possible."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    best = [r.best_decode() for r in replicas]
    n = len(replicas)
    if n < 2 or all(b is None for b in best):
        return None
    p = np.array([r.prefill_rps for r in replicas])
    lp = np.array([r.prefill_latency_s for r in replicas])
    d = np.array([b.rate_rps if b else 0.0 for b in best])
    ld = np.array([b.latency_s if b else 0.0 for b in best])
    can_decode = d > 0

    # split points of the efficiency order: prefill-leaning replicas first
    ratio = np.where(can_decode, p / np.where(can_decode, d, 1.0), np.inf)
    order = np.lexsort((np.arange(n), -ratio))
    cum_p, cum_lp = np.cumsum(p[order]), np.cumsum((p * lp)[order])
    cum_d, cum_ld = np.cumsum(d[order][::-1])[::-1], np.cumsum((d * ld)[order][::-1])[::-1]
    # split s: replicas order[:s] prefill, order[s:] decode; s in 1..n-1
    all_decode_from = np.minimum.accumulate(can_decode[order][::-1])[::-1]  # [s]: order[s:] can decode
    ok = all_decode_from[1:] & (cum_p[:-1] > 0)
    if not ok.any():
        return None
    ps, ds = cum_p[:-1], cum_d[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        obj = np.where(ok, np.round(_objective_array(objective, ps, ds, interval_s), 9), np.inf)
        lat = np.where(ok, predicted_latency(ps, cum_lp[:-1], ds, cum_ld[1:], interval_s), np.inf)
    s_best = 1 + int(np.lexsort((lat, obj))[0])
    start = np.zeros(n, dtype=bool)
    start[order[:s_best]] = True
    # two starts for small cases: the best split point and its mirror image (the other
    # phase-heavy side); with many replicas the split point alone is within one replica of
    # the fractional optimum
    found = [_improve(start, p, lp, d, ld, can_decode, interval_s, objective)]
    mirror = ~start
    if n <= _FLIP_K_MAX_R and can_decode[start].all():
        found.append(_improve(mirror, p, lp, d, ld, can_decode, interval_s, objective))
    is_p = min(found, key=lambda f: f[1])[0]
    return _assignment(is_p, best, p, lp, d, ld, interval_s, objective)


@functools.cache
def _flip_sets(n: int, k: int) -> np.ndarray:
    """Rows: every set of 1..k replicas to flip between roles, as a 0/1 matrix (sets x n)."""
    rows = [c for size in range(1, k + 1) for c in itertools.combinations(range(n), size)]
    out = np.zeros((len(rows), n))
    for i, c in enumerate(rows):
        out[i, list(c)] = 1.0
    return out


def _improve(
    is_p: np.ndarray,
    p: np.ndarray,
    lp: np.ndarray,
    d: np.ndarray,
    ld: np.ndarray,
    can_decode: np.ndarray,
    interval_s: float,
    objective: str,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Best-improvement local search, stopping at a local optimum. Neighbourhood: flipping the
    roles of any 1..3 replicas at once while there are at most `_FLIP_K_MAX_R` replicas, else
    single moves and PREFILL<->DECODER swaps (O(R^2) per pass); vectorised either way."""
    n = len(is_p)
    pw, dw = p * lp, d * ld
    here = (np.inf, np.inf)
    for _ in range(_MAX_PASSES if n <= _FLIP_K_MAX_R else _MAX_PASSES_LARGE):
        psum, pwsum = float(p[is_p].sum()), float(pw[is_p].sum())
        dsum, dwsum = float(d[~is_p].sum()), float(dw[~is_p].sum())
        here = sort_key(
            objective_value(objective, psum, dsum, interval_s),
            predicted_latency(psum, pwsum, dsum, dwsum, interval_s),
        )
        sign = np.where(is_p, -1.0, 1.0)  # +1: the replica would join PREFILL
        if n <= _FLIP_K_MAX_R:
            flips = _flip_sets(n, _FLIP_K)
            dp_, dpw, dd, ddw = (
                flips @ (sign * p),
                flips @ (sign * pw),
                flips @ (-sign * d),
                flips @ (-sign * dw),
            )
            ok = flips @ (~can_decode & is_p).astype(float) == 0  # who cannot decode stays PREFILL
        else:
            pi, di = np.flatnonzero(is_p), np.flatnonzero(~is_p)
            dp_, dpw = (
                np.concatenate((sign * p, _swaps(p, pi, di))),
                np.concatenate((sign * pw, _swaps(pw, pi, di))),
            )
            dd = np.concatenate((-sign * d, -_swaps(d, pi, di)))
            ddw = np.concatenate((-sign * dw, -_swaps(dw, pi, di)))
            ok = np.concatenate((~is_p | can_decode, np.repeat(can_decode[pi], len(di))))
        cand_p, cand_d = psum + dp_, dsum + dd
        ok = ok & (cand_p > 1e-12) & (cand_d > 1e-12)
        if not ok.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            obj = np.where(ok, np.round(_objective_array(objective, cand_p, cand_d, interval_s), 9), np.inf)
            lat = np.where(
                ok, predicted_latency(cand_p, pwsum + dpw, cand_d, dwsum + ddw, interval_s), np.inf
            )
        pick = int(np.lexsort((lat, obj))[0])
        if (float(obj[pick]), float(lat[pick])) >= here:
            break
        if n <= _FLIP_K_MAX_R:
            is_p = is_p ^ (_flip_sets(n, _FLIP_K)[pick] > 0)
        elif pick < n:
            is_p = is_p.copy()
            is_p[pick] = not is_p[pick]
        else:
            a, b = divmod(pick - n, len(di))
            is_p = is_p.copy()
            is_p[pi[a]], is_p[di[b]] = False, True
    return is_p, here


def _swaps(v: np.ndarray, to_decode: np.ndarray, to_prefill: np.ndarray) -> np.ndarray:
    """Change of the PREFILL sum of `v` for every swap (row: who leaves PREFILL, column: who joins)."""
    return (v[to_prefill][None, :] - v[to_decode][:, None]).ravel()


def _assignment(
    is_p: np.ndarray,
    best: Sequence[DecodeChoice | None],
    p: np.ndarray,
    lp: np.ndarray,
    d: np.ndarray,
    ld: np.ndarray,
    interval_s: float,
    objective: str,
) -> RoleAssignment:
    psum, dsum = float(p[is_p].sum()), float(d[~is_p].sum())
    lat = predicted_latency(psum, float((p * lp)[is_p].sum()), dsum, float((d * ld)[~is_p].sum()), interval_s)
    conc = tuple(1 if flag else (b.concurrency if b else 1) for flag, b in zip(is_p, best, strict=True))
    return RoleAssignment(
        prefill=tuple(bool(x) for x in is_p),
        concurrency=conc,
        objective=objective_value(objective, psum, dsum, interval_s),
        latency_s=lat,
        prefill_rps=psum,
        decode_rps=dsum,
    )


def assign_roles_exhaustive(
    replicas: Sequence[ReplicaRates], interval_s: float, objective: str, *, every_concurrency: bool = True
) -> RoleAssignment | None:
    """The method's enumeration: every role set, and (if `every_concurrency`) every combination
    of decoder concurrencies; otherwise each decoder at its best-rate concurrency. Exponential:
    an oracle for tests and for the exhaustive grouping search, not for the planner."""
    n = len(replicas)
    best_key: tuple[float, float] | None = None
    result: RoleAssignment | None = None
    for roles in itertools.product((True, False), repeat=n):
        if all(roles) or not any(roles):
            continue
        psum = sum(r.prefill_rps for r, is_p in zip(replicas, roles, strict=True) if is_p)
        pw = sum(r.prefill_rps * r.prefill_latency_s for r, is_p in zip(replicas, roles, strict=True) if is_p)
        decoders = [r for r, is_p in zip(replicas, roles, strict=True) if not is_p]
        if every_concurrency:
            options: list[Sequence[DecodeChoice]] = [r.decode for r in decoders]
        else:
            options = [[b] if (b := r.best_decode()) else [] for r in decoders]
        for combo in itertools.product(*options):
            dsum = sum(c.rate_rps for c in combo)
            dw = sum(c.rate_rps * c.latency_s for c in combo)
            obj = objective_value(objective, psum, dsum, interval_s)
            lat = predicted_latency(psum, pw, dsum, dw, interval_s)
            key = sort_key(obj, lat)
            if best_key is None or key < best_key:
                best_key = key
                it = iter(combo)
                conc = tuple(1 if is_p else next(it).concurrency for is_p in roles)
                result = RoleAssignment(roles, conc, obj, lat, psum, dsum)
    return result

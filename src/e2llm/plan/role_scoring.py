"""The capacity model of a role assignment: per-replica rates and the score of role vectors.

Inputs are per-replica rates (requests per second a replica sustains in each role) and latencies,
and optionally the KV hand-off capacity of every PREFILL -> DECODER pair (`kv_links`). The search
over role vectors that uses these scores is `plan.roles`.

Capacity model (a fluid one; all rates in requests/s):
- the disaggregated part: PREFILL replicas i at rates p_i, DECODERs j at d_j. Decoders are chosen
  by load (the serving policy), so decoder j receives the share d_j / D of every prefill
  replica's KV, D = sum d_j; prefill routing counts the hand-off backlog, so prefill replica i
  takes at most c_i = min_j kv_ij * D / d_j prompts/s (kv_ij: what the links between i's and j's
  devices carry). The part sustains F_D = min(P, D), P = sum min(p_i, c_i).
- each MIXED replica serves its own requests end to end at m_i (its time shared between the
  phases, see `evaluate`); F = F_D + sum m_i.
Objectives (lower is better, ties broken by lower predicted latency):
- "bottleneck" (the method's): how far the time per request exceeds the arrival interval,
  `max(0, 1/F - interval)` seconds; with only PREFILL and DECODER replicas and no link limit this
  is `max(0, 1/P - interval, 1/D - interval)`. Zero means every phase keeps up; then latency decides.
- "max_rate": the highest sustainable request rate F, reported negated.

Predicted latency (the tie-break): requests spread in proportion to capacity; the disaggregated
share gets the rate-weighted service time of each phase (a prompt's latency includes its KV
hand-off) plus each phase's queueing delay as one M/D/1 server of its summed rate
(`predicted_latency`), each MIXED replica its own service time plus its M/D/1 delay. Without the
queueing term every plan that just keeps up scores 0 on the bottleneck objective and the
tie-break would pick the one with the fastest replicas and no headroom, whose queues then grow
with every burst; with it, headroom is worth its waiting time.

~340 lines: the capacity model has one formula (`score_totals`) behind three ways of scoring
role vectors (all at once, `score_batch`; a local search's neighbours incrementally,
`change_totals` / `swap_totals`), which must agree.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from e2llm.plan.types import Objective, Role

OBJECTIVES = tuple(Objective)
# hand-off capacities of the PREFILL rows and DECODER columns asked for (inf elsewhere)
KvSource = Callable[[Iterable[int], Iterable[int]], "np.ndarray | None"]
Num = TypeVar("Num", float, np.ndarray)
PREFILL_CODE, DECODER_CODE, MIXED_CODE = 0, 1, 2  # a replica's role in a role vector


@dataclass(frozen=True, slots=True)
class DecodeChoice:
    """One feasible decode concurrency of a replica (already meets the per-request speed floor)."""

    concurrency: int
    rate_rps: float  # requests per second: concurrency * tok/s per request / mean output tokens
    latency_s: float  # decode time of one request at this concurrency
    compute_rps: float = 0.0  # the rate before the KV ports' cap (0: not capped, = rate_rps)


@dataclass(frozen=True, slots=True)
class MixedChoice:
    """The replica doing both phases (chunked prefill) at its best concurrency."""

    concurrency: int
    rate_rps: float  # requests per second served end to end
    latency_s: float  # one request, prompt and tokens, at that load


@dataclass(frozen=True, slots=True)
class ReplicaRates:
    prefill_rps: float  # prompts per second in the PREFILL role
    prefill_latency_s: float  # prefill time of one prompt, with its KV hand-off
    decode: tuple[DecodeChoice, ...] = ()  # empty: cannot be a DECODER
    mixed: MixedChoice | None = None  # None: cannot be MIXED
    best: DecodeChoice | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.decode:  # the highest rate (then before any port cap), the lower latency, the smaller batch
            best = min(
                self.decode,
                key=lambda c: (-c.rate_rps, -max(c.rate_rps, c.compute_rps), c.latency_s, c.concurrency),
            )
            object.__setattr__(self, "best", best)

    def best_decode(self) -> DecodeChoice | None:
        return self.best


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    prefill: tuple[bool, ...]  # per replica: True = PREFILL
    concurrency: tuple[int, ...]  # decoders and MIXED: chosen concurrency; prefill replicas: 1
    objective: float
    latency_s: float
    prefill_rps: float  # summed PREFILL rate, each capped by its hand-off capacity
    decode_rps: float
    mixed: tuple[bool, ...] = ()  # per replica: True = MIXED; () = none
    mixed_rps: float = 0.0
    idle: tuple[bool, ...] = ()  # per replica: True = serves nothing (a pool without its partner)

    @property
    def key(self) -> tuple[float, float]:
        return sort_key(self.objective, self.latency_s)

    @property
    def roles(self) -> tuple[Role, ...]:
        mixed = self.mixed or (False,) * len(self.prefill)
        return tuple(
            Role.PREFILL if p else Role.MIXED if m else Role.DECODER
            for p, m in zip(self.prefill, mixed, strict=True)
        )

    @property
    def rate_rps(self) -> float:
        """The sustainable request rate F of the capacity model."""
        return sustainable_rate(self.prefill_rps, self.decode_rps, self.mixed_rps)


def sort_key(objective: float, latency_s: float) -> tuple[float, float]:
    """Lexicographic key; objectives equal to 1e-9 (float noise between summation orders) tie."""
    return (round(objective, 9), latency_s)


def sustainable_rate(prefill_rps: float, decode_rps: float, mixed_rps: float = 0.0) -> float:
    disaggregated = min(prefill_rps, decode_rps) if prefill_rps > 0 and decode_rps > 0 else 0.0
    return disaggregated + mixed_rps


def objective_value(
    kind: str, prefill_rps: float, decode_rps: float, interval_s: float, mixed_rps: float = 0.0
) -> float:
    rate = sustainable_rate(prefill_rps, decode_rps, mixed_rps)
    if kind == "bottleneck":
        return max(0.0, 1.0 / rate - interval_s) if rate > 0 else float("inf")
    if kind == "max_rate":
        return -rate
    raise ValueError(f"unknown objective {kind!r}; choose from {OBJECTIVES}")


def predicted_latency(p_sum: Num, p_weighted: Num, d_sum: Num, d_weighted: Num, interval_s: float) -> Num:
    """Mean per-request latency (s) of a disaggregated pool: rate-weighted service time of each
    phase (`*_weighted` is sum(rate_i * latency_i)) plus each phase's queueing delay. The delay
    treats a phase as one M/D/1 server of its summed rate X at arrival rate lam = 1/interval:
    rho / (2 X (1 - rho)), rho = lam / X, infinite once rho >= 1. Works elementwise on arrays."""
    lam = 1.0 / interval_s
    with np.errstate(divide="ignore", invalid="ignore"):
        service = p_weighted / p_sum + d_weighted / d_sum
        wait = _md1_wait(p_sum, lam) + _md1_wait(d_sum, lam)
    return service + wait


def _md1_wait(rate: Num, lam: Num | float) -> Num:
    r = np.asarray(rate, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.asarray(lam, dtype=float) / r
        wait = np.where(rho < 1.0, rho / (2.0 * r * (1.0 - rho)), np.inf)
    return float(wait) if np.ndim(wait) == 0 else wait  # type: ignore[return-value]


# --- scoring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaArrays:
    """Per-replica numbers in the shapes the vectorised scoring wants."""

    p: np.ndarray
    lp: np.ndarray
    d: np.ndarray
    ld: np.ndarray
    m: np.ndarray
    lm: np.ndarray
    allowed: tuple[tuple[int, ...], ...]  # role codes each replica may take, in enumeration order

    @classmethod
    def of(cls, replicas: Sequence[ReplicaRates]) -> ReplicaArrays:
        best = [r.best_decode() for r in replicas]
        allowed = tuple(
            (PREFILL_CODE,) + ((DECODER_CODE,) if b else ()) + ((MIXED_CODE,) if r.mixed else ())
            for r, b in zip(replicas, best, strict=True)
        )
        return cls(
            p=np.array([r.prefill_rps for r in replicas]),
            lp=np.array([r.prefill_latency_s for r in replicas]),
            d=np.array([b.rate_rps if b else 0.0 for b in best]),
            ld=np.array([b.latency_s if b else 0.0 for b in best]),
            m=np.array([r.mixed.rate_rps if r.mixed else 0.0 for r in replicas]),
            lm=np.array([r.mixed.latency_s if r.mixed else 0.0 for r in replicas]),
            allowed=allowed,
        )

    def with_prefill(self, p: np.ndarray) -> ReplicaArrays:
        return ReplicaArrays(p, self.lp, self.d, self.ld, self.m, self.lm, self.allowed)


def score_roles(
    codes: np.ndarray, a: ReplicaArrays, interval_s: float, objective: str, kv: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(objective, latency, P, D, M) of every role vector (rows of `codes`) of one replica set."""
    one = [x[None, :] for x in (a.p, a.lp, a.d, a.ld, a.m, a.lm)]
    out = score_batch(
        codes, *one, interval_s=interval_s, objective=objective, kv=None if kv is None else kv[None]
    )
    return out[0][0], out[1][0], out[2][0], out[3][0], out[4][0]


def score_batch(
    codes: np.ndarray,
    p: np.ndarray,
    lp: np.ndarray,
    d: np.ndarray,
    ld: np.ndarray,
    m: np.ndarray,
    lm: np.ndarray,
    *,
    interval_s: float,
    objective: str,
    kv: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(objective, latency, P, D, M), each (A, S), of S role vectors (rows of `codes`, (S, R):
    0 PREFILL, 1 DECODER, 2 MIXED) applied to A replica sets of R replicas (rate arrays (A, R);
    `kv` (A, R, R) or None). The objective is inf where the vector is not a valid plan. PREFILL
    replicas without any DECODER (or the reverse) beside MIXED ones are idle: a pool with
    nowhere to hand off to serves nothing, and the plan leaves their devices unused."""
    is_p, is_d, is_m = codes == PREFILL_CODE, codes == DECODER_CODE, codes == MIXED_CODE
    fd, fm = is_d.T.astype(float), is_m.T.astype(float)  # (R, S)
    d_sum = d @ fd  # (A, S)
    p_eff = np.where(is_p[None], p[:, None, :], 0.0)  # (A, S, R)
    if kv is not None:
        p_eff = np.minimum(p_eff, handoff_caps(is_d, d, d_sum, kv))
    p_sum = p_eff.sum(axis=2)
    m_sum = m @ fm
    with np.errstate(invalid="ignore"):
        weighted = ((p_eff * lp[:, None, :]).sum(axis=2), (d * ld) @ fd, (m * lm) @ fm)
    counts = (is_p.sum(axis=1)[None, :], is_d.sum(axis=1)[None, :], is_m.sum(axis=1)[None, :])
    obj, lat = score_totals(
        (p_sum, weighted[0], d_sum, weighted[1], m_sum, weighted[2]), counts, interval_s, objective
    )
    return obj, lat, p_sum, d_sum, m_sum


def score_totals(
    totals: Sequence[np.ndarray], counts: Sequence[np.ndarray], interval_s: float, objective: str
) -> tuple[np.ndarray, np.ndarray]:
    """(objective, latency) of role vectors from their totals, elementwise: `totals` (P, sum of
    p_i * latency_i over PREFILL replicas, D, the same over DECODERs, M, the same over MIXED),
    P already capped by the hand-offs; `counts` the replicas in each role."""
    p_sum, p_weighted, d_sum, d_weighted, m_sum, m_weighted = totals
    n_p, n_d, n_m = counts
    pooled = (n_p > 0) & (n_d > 0)
    any_m = n_m > 0
    f_d = np.where(pooled, np.minimum(p_sum, d_sum), 0.0)
    rate = f_d + m_sum
    lam = 1.0 / interval_s
    with np.errstate(divide="ignore", invalid="ignore"):
        obj = np.maximum(0.0, 1.0 / rate - interval_s) if objective == "bottleneck" else -rate
        rho = lam / rate
        # the disaggregated share of the arrivals, lam * F_D / F, queues at each of its phases
        lam_d = lam * f_d / rate
        service_d = p_weighted / p_sum + d_weighted / d_sum
        lat_d = np.where(pooled, service_d + _md1(p_sum, lam_d) + _md1(d_sum, lam_d), 0.0)
        lat = (f_d / rate) * lat_d
        if any_m.any():  # (+ 0.0 otherwise: the same numbers)
            wait_m = np.where(rho < 1.0, n_m * rho / (2.0 * rate * (1.0 - rho)), np.inf)
            lat = lat + np.where(any_m, m_weighted / rate + wait_m, 0.0)
        lat = np.where(np.isnan(lat), np.inf, lat)
    ok = (pooled | any_m) & (rate > 0)
    return np.where(ok, np.round(obj, 9), np.inf), np.where(ok, lat, np.inf)


def _md1(rate: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """`_md1_wait` on arrays, inside the caller's `np.errstate`."""
    rho = lam / rate
    return np.where(rho < 1.0, rho / (2.0 * rate * (1.0 - rho)), np.inf)


_TOTAL_ROLES = np.array([PREFILL_CODE, PREFILL_CODE, DECODER_CODE, DECODER_CODE, MIXED_CODE, MIXED_CODE])[
    :, None
]
_ROLES = np.array([PREFILL_CODE, DECODER_CODE, MIXED_CODE])[:, None]


def role_values(a: ReplicaArrays) -> np.ndarray:
    """Each replica's part of the totals `score_totals` takes, (6, R), in the role it counts in."""
    return np.stack([a.p, a.p * a.lp, a.d, a.d * a.ld, a.m, a.m * a.lm])


def role_totals(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(totals (6, 1), counts (3, 1)) of one role vector, for `score_totals`; `values`:
    `role_values`."""
    totals = np.where(codes == _TOTAL_ROLES, values, 0.0).sum(axis=1, keepdims=True)
    return totals, (codes == _ROLES).sum(axis=1, keepdims=True)


def change_totals(
    codes: np.ndarray, values: np.ndarray, changes: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(totals (6, S), counts (3, S)) of S candidates for the local search: candidate k is
    `codes` with replica[k] set to role[k] for each (replica, role) pair of `changes` (arrays
    (S,)). Incremental: the totals of `codes` plus the change of the replicas a candidate
    moves, O(S) instead of the O(S x R) of `score_batch` (a 256-device plan scores thousands of
    neighbours of ~180 replicas per pass). The same numbers as `score_batch` up to float
    rounding; the changes are summed before they are added, so candidates of equal value
    (identical replicas swapped) score equally."""
    totals, counts = role_totals(codes, values)
    delta = np.zeros((6, len(changes[0][0])))
    n_delta = np.zeros((3, len(changes[0][0])), dtype=np.int64)
    for replica, role in changes:
        old, v = codes[replica], values[:, replica]
        delta += np.where(role == _TOTAL_ROLES, v, 0.0) - np.where(old == _TOTAL_ROLES, v, 0.0)
        n_delta += (role == _ROLES).astype(np.int64) - (old == _ROLES)
    return totals + delta, counts + n_delta


def swap_totals(
    codes: np.ndarray, values: np.ndarray, pre: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`change_totals` of every swap of a PREFILL replica i of `pre` (to DECODER) with a
    DECODER j of `dec` (to PREFILL), in (i, j) order, as outer differences: the same numbers
    (p_j - p_i is what the two changes add), in a few numpy calls."""
    totals, counts = role_totals(codes, values)
    vp, vd = values[:, pre], values[:, dec]
    delta = np.zeros((6, len(pre), len(dec)))
    delta[0:2] = vd[0:2, None, :] - vp[0:2, :, None]  # the PREFILL totals gain j, lose i
    delta[2:4] = vp[2:4, :, None] - vd[2:4, None, :]  # the DECODER totals gain i, lose j
    return totals + delta.reshape(6, -1), np.repeat(counts, len(pre) * len(dec), axis=1)


def handoff_caps(is_d: np.ndarray, d: np.ndarray, d_sum: np.ndarray, kv: np.ndarray) -> np.ndarray:
    """c_i = min over decoders j of kv_ij * D / d_j, (A, S, R_i): is_d (S, R), d (A, R),
    d_sum (A, S), kv (A, R_i, R_j)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        share = d_sum[:, :, None] / np.where(d > 0, d, 1.0)[:, None, :]  # (A, S, R_j): D / d_j
        scale = np.where(is_d[None], share, np.inf)
        caps = kv[:, None, :, :] * scale[:, :, None, :]  # (A, S, R_i, R_j)
    caps = np.where(np.isnan(caps), np.inf, caps)
    return caps.min(axis=3)


@functools.cache
def role_vectors(allowed: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Every role vector, one row each, in `itertools.product` order of the allowed roles."""
    rows = list(itertools.product(*allowed))
    return np.array(rows, dtype=np.int8).reshape(len(rows), len(allowed))

"""Roles and decode concurrency: which replicas do PREFILL, DECODER or MIXED, and at what batch.

Inputs are per-replica rates (requests per second a replica sustains in each role) and latencies,
and optionally the KV hand-off capacity of every PREFILL -> DECODER pair (`kv_links`).

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
   (<= 16 replicas), or swap a PREFILL and a DECODER (more replicas, at most 8 passes);
3. with link limits, the search runs on the replicas' own rates, then again with each prefill
   rate capped by its hand-off capacity under the split found (two rounds); the best by the true
   score wins.
`assign_roles_exhaustive` enumerates every role set and every decoder concurrency (the method's
enumeration), kept as the test oracle.
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
EXACT_ROWS = 4096  # role vectors scored at once by the exact path ...
EXACT_CELLS_PER_ROW = 32  # ... and with link limits at most 32 x 4096 (rows x R x R) cells: R <= 7
_PREFILL, _DECODER, _MIXED = 0, 1, 2
_CODES = {_PREFILL: Role.PREFILL, _DECODER: Role.DECODER, _MIXED: Role.MIXED}
_MAX_PASSES = 64
_MAX_PASSES_LARGE = 8  # many replicas: the split-point start is already close; bound GA time
_PAIRS_MAX_R = 16  # local search changes two replicas at once up to this many replicas
_KV_ROUNDS = 2


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
class _Arrays:
    """Per-replica numbers in the shapes the vectorised scoring wants."""

    p: np.ndarray
    lp: np.ndarray
    d: np.ndarray
    ld: np.ndarray
    m: np.ndarray
    lm: np.ndarray
    allowed: tuple[tuple[int, ...], ...]  # role codes each replica may take, in enumeration order

    @classmethod
    def of(cls, replicas: Sequence[ReplicaRates]) -> _Arrays:
        best = [r.best_decode() for r in replicas]
        allowed = tuple(
            (_PREFILL,) + ((_DECODER,) if b else ()) + ((_MIXED,) if r.mixed else ())
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

    def with_prefill(self, p: np.ndarray) -> _Arrays:
        return _Arrays(p, self.lp, self.d, self.ld, self.m, self.lm, self.allowed)


def score_roles(
    codes: np.ndarray, a: _Arrays, interval_s: float, objective: str, kv: np.ndarray | None = None
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
    is_p, is_d, is_m = codes == _PREFILL, codes == _DECODER, codes == _MIXED
    fd, fm = is_d.T.astype(float), is_m.T.astype(float)  # (R, S)
    d_sum = d @ fd  # (A, S)
    p_eff = np.where(is_p[None], p[:, None, :], 0.0)  # (A, S, R)
    if kv is not None:
        p_eff = np.minimum(p_eff, _handoff_caps(is_d, d, d_sum, kv))
    p_sum = p_eff.sum(axis=2)
    m_sum = m @ fm
    pooled = (is_p.any(axis=1) & is_d.any(axis=1))[None, :]  # (1, S)
    valid = pooled | is_m.any(axis=1)[None, :]
    f_d = np.where(pooled, np.minimum(p_sum, d_sum), 0.0)
    rate = f_d + m_sum
    lam = 1.0 / interval_s
    with np.errstate(divide="ignore", invalid="ignore"):
        obj = np.maximum(0.0, 1.0 / rate - interval_s) if objective == "bottleneck" else -rate
        rho = lam / rate
        # the disaggregated share of the arrivals, lam * F_D / F, queues at each of its phases
        lam_d = lam * f_d / rate
        service_d = (p_eff * lp[:, None, :]).sum(axis=2) / p_sum + ((d * ld) @ fd) / d_sum
        lat_d = np.where(pooled, service_d + _md1_wait(p_sum, lam_d) + _md1_wait(d_sum, lam_d), 0.0)
        n_m = is_m.sum(axis=1)[None, :]
        wait_m = np.where(rho < 1.0, n_m * rho / (2.0 * rate * (1.0 - rho)), np.inf)
        lat_m = np.where(n_m > 0, ((m * lm) @ fm) / rate + wait_m, 0.0)
        lat = (f_d / rate) * lat_d + lat_m
        lat = np.where(np.isnan(lat), np.inf, lat)
    ok = valid & (rate > 0)
    return np.where(ok, np.round(obj, 9), np.inf), np.where(ok, lat, np.inf), p_sum, d_sum, m_sum


def _handoff_caps(is_d: np.ndarray, d: np.ndarray, d_sum: np.ndarray, kv: np.ndarray) -> np.ndarray:
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
    a = _Arrays.of(replicas)
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
    # with link limits the exact path's temporaries are rows x R x R (`_handoff_caps`)
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
        pre, dec = np.flatnonzero(found == _PREFILL), np.flatnonzero(found == _DECODER)
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
        caps = _handoff_caps(found[None, :] == _DECODER, a.d[None, :], d_sum, m[None])[0, 0]
        if (caps >= a.p).all():
            break  # the next round would search the same rates
        search = a.with_prefill(np.minimum(a.p, caps))
    if best is None or not np.isfinite(best[0][0]):
        return None
    return _assignment(best[1], replicas, a, interval_s, objective, best[2])


def _heuristic(a: _Arrays, interval_s: float, objective: str) -> np.ndarray | None:
    """Split-point starts (and all-MIXED), then best-improvement local search."""
    n = len(a.p)
    can_d = a.d > 0
    starts = []
    ratio = np.where(can_d, a.p / np.where(can_d, a.d, 1.0), np.inf)
    order = np.lexsort((np.arange(n), -ratio))  # prefill-leaning replicas first
    for s in range(1, n):
        if can_d[order[s:]].all():
            codes = np.full(n, _DECODER, dtype=np.int8)
            codes[order[:s]] = _PREFILL
            starts.append(codes)
    if all(_MIXED in roles for roles in a.allowed):
        starts.append(np.full(n, _MIXED, dtype=np.int8))
    if not starts:
        return None
    obj, lat, *_ = score_roles(np.array(starts), a, interval_s, objective)
    pick = int(np.lexsort((lat, obj))[0])
    return _improve(starts[pick], a, interval_s, objective)


def _improve(codes: np.ndarray, a: _Arrays, interval_s: float, objective: str) -> np.ndarray:
    """Best-improvement local search over role vectors, stopping at a local optimum."""
    n = len(codes)
    here = _key(codes, a, interval_s, objective)
    for _ in range(_MAX_PASSES if n <= _PAIRS_MAX_R else _MAX_PASSES_LARGE):
        cands = _neighbours(codes, a.allowed, pairs=n <= _PAIRS_MAX_R)
        if not len(cands):
            break
        obj, lat, *_ = score_roles(cands, a, interval_s, objective)
        pick = int(np.lexsort((lat, obj))[0])
        key = (float(obj[pick]), float(lat[pick]))
        if key >= here:
            break
        codes, here = cands[pick], key
    return codes


def _key(codes: np.ndarray, a: _Arrays, interval_s: float, objective: str) -> tuple[float, float]:
    obj, lat, *_ = score_roles(codes[None, :], a, interval_s, objective)
    return float(obj[0]), float(lat[0])


def _neighbours(codes: np.ndarray, allowed: tuple[tuple[int, ...], ...], *, pairs: bool) -> np.ndarray:
    """Every vector one role change away; with `pairs` also two changes, else PREFILL<->DECODER
    swaps (a change of two that keeps both pools' sizes). Built with numpy (rows in the order of
    the changes: replica, then role; pairs in `itertools.combinations` order)."""
    replica, role, can_decode = _changes(allowed)
    keep = role != codes[replica]
    replica, role = replica[keep], role[keep]
    blocks = [_apply(codes, (replica, role))]
    if pairs:
        first, second = np.triu_indices(len(replica), 1)
        apart = replica[first] != replica[second]
        first, second = first[apart], second[apart]
        blocks.append(_apply(codes, (replica[first], role[first]), (replica[second], role[second])))
    else:
        pre = np.flatnonzero((codes == _PREFILL) & can_decode)
        dec = np.flatnonzero(codes == _DECODER)
        i, j = (x.ravel() for x in np.meshgrid(pre, dec, indexing="ij"))
        blocks.append(_apply(codes, (i, np.full(len(i), _DECODER)), (j, np.full(len(j), _PREFILL))))
    return np.concatenate(blocks).astype(np.int8, copy=False)


def _apply(codes: np.ndarray, *changes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One row per change set: `codes` with replica[k] set to role[k] for each (replica, role)."""
    n_rows = len(changes[0][0])
    rows = np.repeat(codes[None, :], n_rows, axis=0)
    k = np.arange(n_rows)
    for replica, role in changes:
        rows[k, replica] = role
    return rows


@functools.cache
def _changes(allowed: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(replica, role) of every allowed role of every replica, and which replicas can decode."""
    pairs = [(i, r) for i, roles in enumerate(allowed) for r in roles]
    return (
        np.array([i for i, _ in pairs], dtype=np.intp),
        np.array([r for _, r in pairs], dtype=np.int8),
        np.array([_DECODER in roles for roles in allowed]),
    )


def _assignment(
    codes: np.ndarray,
    replicas: Sequence[ReplicaRates],
    a: _Arrays,
    interval_s: float,
    objective: str,
    kv: np.ndarray | None,
) -> RoleAssignment:
    obj, lat, p_sum, d_sum, m_sum = score_roles(codes[None, :], a, interval_s, objective, kv)
    conc = []
    for code, r in zip(codes, replicas, strict=True):
        if code == _DECODER:
            conc.append(r.best.concurrency if r.best else 1)
        elif code == _MIXED:
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
    pooled = _PREFILL in codes and _DECODER in codes
    mixed = tuple(c == _MIXED for c in codes)
    idle = tuple(not pooled and c != _MIXED for c in codes)
    return RoleAssignment(
        prefill=tuple(c == _PREFILL for c in codes),
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
    base = _Arrays.of(replicas)
    best: tuple[tuple[float, float], RoleAssignment] | None = None
    for codes in role_vectors(base.allowed):
        decoders = [i for i, c in enumerate(codes) if c == _DECODER]
        options: list[Sequence[DecodeChoice]] = [
            replicas[i].decode if every_concurrency else [c for c in (replicas[i].best,) if c]
            for i in decoders
        ]
        for combo in itertools.product(*options):
            d, ld = base.d.copy(), base.ld.copy()
            for i, c in zip(decoders, combo, strict=True):
                d[i], ld[i] = c.rate_rps, c.latency_s
            a = _Arrays(base.p, base.lp, d, ld, base.m, base.lm, base.allowed)
            obj, lat, p_sum, d_sum, m_sum = score_roles(codes[None, :], a, interval_s, objective)
            key = (float(obj[0]), float(lat[0]))
            if not np.isfinite(key[0]) or (best is not None and key >= best[0]):
                continue
            it = iter(combo)
            conc = tuple(
                next(it).concurrency
                if c == _DECODER
                else (replicas[i].mixed.concurrency if c == _MIXED and replicas[i].mixed else 1)  # type: ignore[union-attr]
                for i, c in enumerate(codes)
            )
            best = (key, _make(codes, conc, *key, float(p_sum[0]), float(d_sum[0]), float(m_sum[0])))
    return None if best is None else best[1]

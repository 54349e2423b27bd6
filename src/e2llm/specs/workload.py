"""Workloads: how requests arrive and how long they are (reading them from files: `workload_file`).

A workload is either synthetic (an arrival process plus two token-length distributions) or a
trace (Azure format CSV) replayed or resampled. `generate_requests` turns either into the same
list of `Request`s, deterministically for a seed, so every system sees identical requests.

Randomness: one `numpy.random.SeedSequence(seed)` spawns three independent streams (arrivals,
input lengths, output lengths), so changing a length distribution leaves the arrival times alone.
Arrivals start at 0 s (request 0 arrives at t = 0); gaps are fixed, exponential (Poisson) or gamma
with the given coefficient of variation (burstiness; cv = 1 is Poisson).

Lognormal lengths: the method publishes only mean token counts, so the examples use a lognormal
with that mean and cv 0.5 (our choice). Samples are rounded and clamped to `[min, max]`; `max`
defaults to 10 x the mean (`DEFAULT_MAX_FACTOR`), which at cv <= 1 cuts < 0.1% of the mass and
keeps the sample mean within ~1% of the published mean, while excluding absurd 50x outliers
that no model context would admit. `mean_*_tokens` report the nominal (published) mean.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from e2llm.errors import InputError
from e2llm.specs.trace import Trace


class ArrivalProcess(StrEnum):
    FIXED = "fixed"
    POISSON = "poisson"
    GAMMA = "gamma"
    REPLAY = "replay"  # a trace's own timestamps (not written as `arrival.process` in files)


class Distribution(StrEnum):
    """How one side's token counts are drawn."""

    FIXED = "fixed"
    LOGNORMAL = "lognormal"
    UNIFORM = "uniform"
    TRACE = "trace"


class TraceColumn(StrEnum):
    INPUT = "input"
    OUTPUT = "output"


DEFAULT_MAX_FACTOR = 10.0
DEFAULT_MIN_DECODE_TOK_S = 15.0
# Bounds on what a workload may ask for, so that a typo cannot make generation allocate terabytes
# or overflow int64: 10 million requests (500x the Azure conv trace), `trace.MAX_TOKENS` per prompt
# or answer, and a coefficient of variation of at most 100.
MAX_REQUESTS = 10_000_000
MAX_CV = 100.0


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    arrival_s: float  # seconds from the start of the run
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Arrival:
    """How requests arrive. `replay` replays `trace` timestamps multiplied by `time_scale`
    (0.5 = twice the load); the others draw gaps with mean `interval_s`."""

    process: ArrivalProcess
    interval_s: float  # mean gap (replay: the trace's mean gap times time_scale)
    cv: float = 0.0  # gamma only: coefficient of variation of the gaps
    trace: Trace | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "process", ArrivalProcess(self.process))  # code may pass "fixed"


@dataclass(frozen=True)
class LengthDist:
    """Token counts of one side (input or output) of every request, clamped to [low, high].

    `fixed`: always `mean`; `lognormal`: mean `mean`, coefficient of variation `cv`;
    `uniform`: integers in [low, high]; `trace`: the `column` of `trace`, sampled with
    replacement (paired with the other side when both name the same trace).
    """

    dist: Distribution
    mean: float
    cv: float = 0.0
    low: int = 1
    high: int | None = None
    trace: Trace | None = None
    column: TraceColumn | None = None  # trace only

    def __post_init__(self) -> None:
        object.__setattr__(self, "dist", Distribution(self.dist))  # code may pass "lognormal"


@dataclass(frozen=True)
class Workload:
    requests: int  # number of requests
    seed: int
    arrival: Arrival
    input_tokens: LengthDist
    output_tokens: LengthDist
    min_decode_tok_s: float = DEFAULT_MIN_DECODE_TOK_S  # per-request generation speed floor
    source: str = "<workload>"

    @property
    def mean_input_tokens(self) -> float:
        """What the planner plans for: the nominal mean (fixed/lognormal/uniform), or the exact
        mean of the trace rows used (replay: the replayed rows; sampling: the whole column)."""
        return self._mean(self.input_tokens)

    @property
    def mean_output_tokens(self) -> float:
        return self._mean(self.output_tokens)

    @property
    def mean_interval_s(self) -> float:
        """Mean time between arrivals (replay: over the replayed rows)."""
        if self.arrival.process is ArrivalProcess.REPLAY:
            t = _replay_arrivals(self.arrival, self.requests)
            return float(t[-1] / (len(t) - 1)) if len(t) > 1 else self.arrival.interval_s
        return self.arrival.interval_s

    @property
    def is_replay(self) -> bool:
        return self.arrival.process is ArrivalProcess.REPLAY

    def _mean(self, d: LengthDist) -> float:
        if self.is_replay and d.trace is not None:
            return float(_clamp(_replay_column(d, self.requests), d).mean())
        if d.dist is Distribution.TRACE and d.trace is not None:
            return float(_clamp(_column(d), d).mean())
        return d.mean

    def generate(self, seed: int | None = None) -> list[Request]:
        """Same as `generate_requests(self, seed)`."""
        return generate_requests(self, seed)


def generate_requests(workload: Workload, seed: int | None = None) -> list[Request]:
    """The workload's requests: ids 0..n-1, arrivals sorted from 0 s, token counts >= 1.
    Deterministic for `seed` (default: the workload's own)."""
    n = workload.requests
    streams = np.random.SeedSequence(workload.seed if seed is None else seed).spawn(3)
    rng_t, rng_in, rng_out = (np.random.default_rng(s) for s in streams)
    a = workload.arrival
    if a.process is ArrivalProcess.REPLAY:
        arrivals = _replay_arrivals(a, n)
        ins = _replay_column(workload.input_tokens, n)
        outs = _replay_column(workload.output_tokens, n)
    else:
        arrivals = _arrivals(a, n, rng_t)
        ins, outs = _lengths(workload.input_tokens, workload.output_tokens, n, rng_in, rng_out)
    ins = _clamp(ins, workload.input_tokens)
    outs = _clamp(outs, workload.output_tokens)
    return [
        Request(id=i, arrival_s=t, input_tokens=x, output_tokens=y)
        for i, (t, x, y) in enumerate(zip(arrivals.tolist(), ins.tolist(), outs.tolist(), strict=True))
    ]


def with_load(
    workload: Workload,
    *,
    interval_s: float | None = None,
    rate_per_s: float | None = None,
    requests: int | None = None,
) -> Workload:
    """`workload` with another mean arrival rate and/or request count (for load sweeps).

    The arrival process is kept (fixed stays fixed); a replayed trace is time-scaled so that its
    replayed rows have the requested mean gap.
    """
    if interval_s is not None and rate_per_s is not None:
        raise InputError(
            "interval_s/rate_per_s", "give at most one of interval and rate", (interval_s, rate_per_s)
        )
    for name, value in (("interval_s", interval_s), ("rate_per_s", rate_per_s)):
        if value is not None and (not math.isfinite(value) or value <= 0 or not math.isfinite(1 / value)):
            raise InputError(name, "must be > 0 (and its inverse finite)", value)
    if requests is not None and not 1 <= requests <= MAX_REQUESTS:
        raise InputError("requests", f"must be in [1, {MAX_REQUESTS}]", requests)
    w = dataclasses.replace(workload, requests=requests) if requests is not None else workload
    target = interval_s if interval_s is not None else (1.0 / rate_per_s if rate_per_s is not None else None)
    if target is None:
        return w
    a = w.arrival
    if a.process is ArrivalProcess.REPLAY:
        assert a.trace is not None
        raw = dataclasses.replace(a, time_scale=1.0)
        t = _replay_arrivals(raw, w.requests)
        raw_gap = float(t[-1] / (len(t) - 1)) if len(t) > 1 else 0.0
        if raw_gap <= 0:
            raise InputError(w.source, "cannot rescale a trace whose replayed rows all arrive at once")
        scale = target / raw_gap
        return dataclasses.replace(w, arrival=dataclasses.replace(a, time_scale=scale, interval_s=target))
    return dataclasses.replace(w, arrival=dataclasses.replace(a, interval_s=target))


# --- sampling ---------------------------------------------------------------------------------


def _arrivals(a: Arrival, n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    if a.process is ArrivalProcess.FIXED:
        return np.arange(n, dtype=np.float64) * a.interval_s
    if a.process is ArrivalProcess.POISSON:
        gaps = rng.exponential(a.interval_s, n)
    else:  # gamma: shape 1/cv^2, scale interval*cv^2 -> mean interval, cv as given
        gaps = rng.gamma(1.0 / a.cv**2, a.interval_s * a.cv**2, n)
    t = np.empty(n, dtype=np.float64)
    t[0] = 0.0
    np.cumsum(gaps[:-1], out=t[1:])
    return t


def _replay_arrivals(a: Arrival, n: int) -> npt.NDArray[np.float64]:
    """The trace's timestamps for n requests; past the last row the trace repeats, each copy
    shifted by the trace span plus one mean gap."""
    assert a.trace is not None
    t = a.trace.arrival_s
    period = float(t[-1]) + a.trace.mean_interval_s
    idx = np.arange(n)
    return (t[idx % len(t)] + (idx // len(t)) * period) * a.time_scale


def _replay_column(d: LengthDist, n: int) -> npt.NDArray[np.int64]:
    col = _column(d)
    return col[np.arange(n) % len(col)]


def _column(d: LengthDist) -> npt.NDArray[np.int64]:
    assert d.trace is not None
    return d.trace.input_tokens if d.column is TraceColumn.INPUT else d.trace.output_tokens


def _lengths(
    din: LengthDist, dout: LengthDist, n: int, rng_in: np.random.Generator, rng_out: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if din.trace is not None and dout.trace is not None and din.trace.source == dout.trace.source:
        idx = rng_in.integers(0, din.trace.rows, n)  # one trace row per request: real pairs
        return _column(din)[idx], _column(dout)[idx]
    return _sample(din, n, rng_in), _sample(dout, n, rng_out)


def _sample(d: LengthDist, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if d.dist is Distribution.FIXED or (d.dist is Distribution.LOGNORMAL and d.cv == 0):
        return np.full(n, round(d.mean), dtype=np.int64)
    if d.dist is Distribution.LOGNORMAL:
        sigma2 = math.log1p(d.cv**2)
        x = rng.lognormal(math.log(d.mean) - sigma2 / 2, math.sqrt(sigma2), n)
        return np.rint(x).astype(np.int64)
    if d.dist is Distribution.UNIFORM:
        assert d.high is not None
        return rng.integers(d.low, d.high + 1, n, dtype=np.int64)
    col = _column(d)
    return col[rng.integers(0, len(col), n)]


def _clamp(x: npt.NDArray[np.int64], d: LengthDist) -> npt.NDArray[np.int64]:
    return np.clip(x, max(d.low, 1), d.high if d.high is not None else None)

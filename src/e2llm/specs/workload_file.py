"""The workload YAML (DESIGN "Input files") -> `Workload`, with one-line errors for every bad field.

Three forms:
- synthetic: `requests`, `seed`, `arrival`, `input_tokens`, `output_tokens`, `min_decode_tok_s`;
- trace replay: `trace: path` (relative to the YAML file) with optional `time_scale` (multiplies
  the timestamps) or `rate_per_s` (rescales them to that mean rate), `requests` (default: all
  rows; more than the trace has repeats it), `min_decode_tok_s`;
- trace sampling: `trace: path` plus `arrival`: token pairs drawn from the trace, arrivals from
  the process (SplitwiseSim's way of sweeping a trace's load).
An Azure-format `.csv` given directly is replayed whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.fields import (
    as_mapping,
    check_keys,
    field_where,
    get_int,
    get_number,
    get_str,
    read_yaml_mapping,
)
from e2llm.specs.trace import MAX_TOKENS, Trace, load_trace
from e2llm.specs.workload import (
    DEFAULT_MAX_FACTOR,
    DEFAULT_MIN_DECODE_TOK_S,
    MAX_CV,
    MAX_REQUESTS,
    Arrival,
    ArrivalProcess,
    Distribution,
    LengthDist,
    TraceColumn,
    Workload,
    with_load,
)

_TOP_KEYS = (
    "requests",
    "seed",
    "arrival",
    "input_tokens",
    "output_tokens",
    "min_decode_tok_s",
    "trace",
    "time_scale",
    "rate_per_s",
    "description",
)
MIN_GAMMA_CV = 1e-6
_LENGTH_KEYS = {
    "fixed": ("dist", "value", "mean", "min", "max"),
    "lognormal": ("dist", "mean", "cv", "min", "max"),
    "uniform": ("dist", "min", "max"),
    "trace": ("dist", "path", "min", "max"),
}


def load_workload(
    path: str | Path,
    *,
    interval_s: float | None = None,
    rate_per_s: float | None = None,
    requests: int | None = None,
) -> Workload:
    """Read a workload YAML file or an Azure-format trace CSV (replayed), then apply the
    load overrides of `with_load`."""
    return with_load(
        read_workload(Path(path)), interval_s=interval_s, rate_per_s=rate_per_s, requests=requests
    )


def read_workload(path: Path) -> Workload:
    """Parse a workload YAML file or replay an Azure-format trace CSV."""
    if path.suffix.lower() == ".csv":
        trace = load_trace(path)
        return _replay(trace, trace.rows, 1, DEFAULT_MIN_DECODE_TOK_S, 1.0, str(path))
    d = read_yaml_mapping(path, "workload")
    where = str(path)
    check_keys(d, _TOP_KEYS, where)
    seed = get_int(d, "seed", where, default=1, minimum=0)
    min_tok_s = get_number(d, "min_decode_tok_s", where, default=DEFAULT_MIN_DECODE_TOK_S)
    if "trace" in d:
        return _trace_workload(d, path, seed, min_tok_s)
    for key in ("time_scale", "rate_per_s"):
        if key in d:
            raise InputError(field_where(where, key), "only for trace workloads (use arrival.rate_per_s)")
    for key in ("requests", "arrival", "input_tokens", "output_tokens"):
        if key not in d:
            raise InputError(field_where(where, key), "missing required field")
    return Workload(
        requests=get_int(d, "requests", where, maximum=MAX_REQUESTS),
        seed=seed,
        arrival=_arrival(d["arrival"], field_where(where, "arrival")),
        input_tokens=_length(d["input_tokens"], field_where(where, "input_tokens"), path, TraceColumn.INPUT),
        output_tokens=_length(
            d["output_tokens"], field_where(where, "output_tokens"), path, TraceColumn.OUTPUT
        ),
        min_decode_tok_s=min_tok_s,
        source=where,
    )


def _trace_workload(d: dict[str, Any], path: Path, seed: int, min_tok_s: float) -> Workload:
    """`trace:` forms: replay (optionally time-scaled or rate-scaled) or, with `arrival`, pairs
    sampled from the trace under a synthetic arrival process."""
    where = str(path)
    trace = load_trace(_relative(get_str(d, "trace", where), path))
    for key in ("input_tokens", "output_tokens"):
        if key in d:
            raise InputError(
                field_where(where, key), "not allowed with `trace` (lengths come from the trace)"
            )
    requests = get_int(d, "requests", where, default=trace.rows, maximum=MAX_REQUESTS)
    if "arrival" in d:
        for key in ("time_scale", "rate_per_s"):
            if key in d:
                raise InputError(field_where(where, key), "not allowed with `arrival` (set the rate there)")
        arrival = _arrival(d["arrival"], field_where(where, "arrival"))
        return Workload(requests, seed, arrival, *_trace_lengths(trace), min_tok_s, where)
    if "time_scale" in d and "rate_per_s" in d:
        raise InputError(field_where(where, "rate_per_s"), "give time_scale or rate_per_s, not both")
    w = _replay(trace, requests, seed, min_tok_s, get_number(d, "time_scale", where, default=1.0), where)
    return with_load(w, rate_per_s=_rate(d, where)) if "rate_per_s" in d else w


def _replay(trace: Trace, requests: int, seed: int, min_tok_s: float, scale: float, source: str) -> Workload:
    arrival = Arrival(ArrivalProcess.REPLAY, trace.mean_interval_s * scale, trace=trace, time_scale=scale)
    return Workload(requests, seed, arrival, *_trace_lengths(trace), min_tok_s, source)


def _trace_lengths(trace: Trace) -> tuple[LengthDist, LengthDist]:
    """(input, output) lengths drawn from the same trace rows."""
    return (
        LengthDist(
            Distribution.TRACE, float(trace.input_tokens.mean()), trace=trace, column=TraceColumn.INPUT
        ),
        LengthDist(
            Distribution.TRACE, float(trace.output_tokens.mean()), trace=trace, column=TraceColumn.OUTPUT
        ),
    )


def _relative(name: str, yaml_path: Path) -> Path:
    p = Path(name)
    return p if p.is_absolute() else yaml_path.parent / p


def _arrival(raw: Any, where: str) -> Arrival:
    d = as_mapping(raw, where)
    check_keys(d, ("process", "interval_s", "rate_per_s", "cv"), where)
    text = get_str(d, "process", where)
    process = next((p for p in ArrivalProcess if p == text and p is not ArrivalProcess.REPLAY), None)
    if process is None:
        choices = ", ".join(p for p in ArrivalProcess if p is not ArrivalProcess.REPLAY)
        raise InputError(
            field_where(where, "process"), f"unknown arrival process; expected one of {choices}", text
        )
    if ("interval_s" in d) == ("rate_per_s" in d):
        raise InputError(where, "give exactly one of interval_s and rate_per_s", dict(d))
    interval = get_number(d, "interval_s", where) if "interval_s" in d else 1.0 / _rate(d, where)
    cv = 0.0
    if process is ArrivalProcess.GAMMA:  # cv**2 must neither underflow to 0 nor overflow
        cv = get_number(d, "cv", where, minimum=MIN_GAMMA_CV, strict=False, maximum=MAX_CV)
    elif "cv" in d:
        raise InputError(field_where(where, "cv"), f"only for the gamma process (not {process})", d["cv"])
    return Arrival(process, interval, cv=cv)


def _rate(d: Any, where: str) -> float:
    """`rate_per_s`, > 0 with a finite mean gap (a denormal rate's inverse is inf)."""
    rate = get_number(d, "rate_per_s", where)
    if not math.isfinite(1.0 / rate):
        raise InputError(field_where(where, "rate_per_s"), "is too small (its mean gap is infinite)", rate)
    return rate


def _length(raw: Any, where: str, yaml_path: Path, column: TraceColumn) -> LengthDist:
    d = as_mapping(raw, where)
    text = get_str(d, "dist", where)
    if text not in set(Distribution):
        raise InputError(
            field_where(where, "dist"),
            f"unknown distribution; expected one of {', '.join(Distribution)}",
            text,
        )
    dist = Distribution(text)
    check_keys(d, _LENGTH_KEYS[dist], where)
    low = get_int(d, "min", where, default=1, maximum=MAX_TOKENS)
    high: int | None = get_int(d, "max", where, maximum=MAX_TOKENS) if d.get("max") is not None else None
    if high is not None and high < low:
        raise InputError(field_where(where, "max"), f"must be >= min ({low})", high)
    if dist is Distribution.UNIFORM:
        if high is None:
            raise InputError(field_where(where, "max"), "missing required field")
        return LengthDist(dist, (low + high) / 2, low=low, high=high)
    if dist is Distribution.TRACE:
        trace = load_trace(_relative(get_str(d, "path", where), yaml_path))
        values = trace.input_tokens if column is TraceColumn.INPUT else trace.output_tokens
        return LengthDist(dist, float(values.mean()), low=low, high=high, trace=trace, column=column)
    if dist is Distribution.FIXED:
        if ("value" in d) == ("mean" in d):
            raise InputError(where, "give exactly one of value and mean", dict(d))
        value = get_number(d, "value" if "value" in d else "mean", where, maximum=MAX_TOKENS)
        return LengthDist(dist, value, low=low, high=high)
    mean = get_number(d, "mean", where, maximum=MAX_TOKENS)
    cv = get_number(d, "cv", where, strict=False, maximum=MAX_CV)
    if high is None:
        high = _default_max(mean)
        if high < low:
            raise InputError(
                field_where(where, "min"), f"is above the default max ({high} = 10 x mean); give max", low
            )
    return LengthDist(dist, mean, cv=cv, low=low, high=high)


def _default_max(mean: float) -> int:
    return max(1, round(DEFAULT_MAX_FACTOR * mean))

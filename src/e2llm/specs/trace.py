"""Azure-format LLM inference traces: `TIMESTAMP,ContextTokens,GeneratedTokens` CSVs.

Timestamps look like `2023-11-16 18:17:03.9799600` (up to 7 fractional digits, more than
`datetime.fromisoformat` guarantees), so they are parsed by hand; arrivals are kept in seconds
relative to the first row, sorted. Parsed traces are cached per (resolved path, mtime, size)
because load sweeps reload the same trace for every point; one file is one `Trace` object.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from e2llm.errors import InputError
from e2llm.specs.input_file import read_input_text

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MAX_TRACE_BYTES = 256 * 2**20  # ~7 million rows; the Azure 2023 traces are under 1 MiB
MAX_TOKENS = 10_000_000  # per prompt or answer: beyond any model's context (workloads share it)


@dataclass(frozen=True, eq=False)
class Trace:
    """A parsed trace; arrays are read-only and share one row order (sorted by arrival)."""

    source: str
    arrival_s: npt.NDArray[np.float64]  # seconds since the first request
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]

    @property
    def rows(self) -> int:
        return len(self.arrival_s)

    @property
    def mean_interval_s(self) -> float:
        """Span / gaps: the mean time between consecutive arrivals."""
        return float(self.arrival_s[-1] / (self.rows - 1)) if self.rows > 1 else 0.0


def load_trace(path: str | Path) -> Trace:
    """Read an Azure-format CSV; a bad header or row is an `InputError` naming the line."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(str(p), "trace file not found") from None
    except OSError as e:
        raise InputError(str(p), f"cannot read trace file: {e}") from None
    return _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> Trace:
    lines = read_input_text(path, "trace", MAX_TRACE_BYTES).splitlines()
    if not lines:
        raise InputError(f"{path}:1", "empty trace file")
    header = [c.strip() for c in lines[0].split(",")]
    try:
        cols = [header.index(c) for c in COLUMNS]
    except ValueError:
        raise InputError(
            f"{path}:1", f"trace header must have columns {','.join(COLUMNS)}", lines[0]
        ) from None
    n_cols = len(header)
    times: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    day_seconds: dict[str, float] = {}  # date -> its offset in seconds; "" -> first day
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != n_cols:
            raise InputError(f"{path}:{lineno}", f"expected {n_cols} comma-separated fields", line)
        stamp = parts[cols[0]].strip()
        try:
            times.append(_seconds(stamp, day_seconds))
        except (ValueError, IndexError):
            raise InputError(
                f"{path}:{lineno}", "bad TIMESTAMP (want YYYY-MM-DD HH:MM:SS[.fff])", stamp
            ) from None
        for col, name, out in ((cols[1], "ContextTokens", ins), (cols[2], "GeneratedTokens", outs)):
            text = parts[col].strip()
            # ASCII only: str.isdigit() is also true for "²", which int() rejects; the length
            # check keeps int() away from its 4300-digit limit
            if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) > MAX_TOKENS:
                raise InputError(f"{path}:{lineno}", f"{name} must be an integer in [0, {MAX_TOKENS}]", text)
            out.append(int(text))
    if not times:
        raise InputError(path, "trace has no rows")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    arrival = t[order] - t[order[0]]
    arrays = (arrival, np.asarray(ins, dtype=np.int64)[order], np.asarray(outs, dtype=np.int64)[order])
    for a in arrays:
        a.flags.writeable = False
    return Trace(source=path, arrival_s=arrays[0], input_tokens=arrays[1], output_tokens=arrays[2])


def _seconds(stamp: str, day_seconds: dict[str, float]) -> float:
    """`YYYY-MM-DD HH:MM:SS[.fraction]` -> seconds since midnight of the first date parsed
    (`day_seconds` caches each date's offset), so a float keeps sub-microsecond resolution."""
    date, clock = stamp.split(" ", 1) if " " in stamp else stamp.split("T", 1)
    base = day_seconds.get(date)
    if base is None:
        day = datetime.date.fromisoformat(date).toordinal()
        first = day_seconds.setdefault("", day)  # the first date seen: keeps values small
        base = (day - first) * 86400.0
        day_seconds[date] = base
    hms, _, frac = clock.partition(".")
    h, m, s = hms.split(":")
    if len(h) != 2 or len(m) != 2 or len(s) != 2 or (frac and not frac.isdigit()):
        raise ValueError(stamp)
    hours, minutes, secs = int(h), int(m), int(s)
    if hours > 23 or minutes > 59 or secs > 60:
        raise ValueError(stamp)
    value = base + hours * 3600 + minutes * 60 + secs
    return value + int(frac) / 10 ** len(frac) if frac else value

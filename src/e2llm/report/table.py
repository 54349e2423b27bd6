"""Readable text tables of metrics objects (DESIGN "Metrics JSON")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (header, metric, statistic or None for a plain number, format)
COLUMNS: tuple[tuple[str, str, str | None, str], ...] = (
    ("done", "completed", None, "{:.0f}"),
    ("failed", "failed", None, "{:.0f}"),
    ("wait mean", "waiting_time_s", "mean", "{:.2f}"),
    ("wait p90", "waiting_time_s", "p90", "{:.2f}"),
    ("TTFT mean", "ttft_s", "mean", "{:.2f}"),
    ("TTFT p99", "ttft_s", "p99", "{:.2f}"),
    ("2nd tok", "second_token_s", "mean", "{:.2f}"),
    ("TBT mean", "tbt_s", "mean", "{:.3f}"),
    ("E2E mean", "e2e_s", "mean", "{:.1f}"),
    ("prefill tok/s", "prefill_tok_s", "mean", "{:.0f}"),
    ("decode tok/s", "decode_tok_s", "mean", "{:.1f}"),
    ("out tok/s", "throughput_tok_s", None, "{:.1f}"),
    ("max dec", "max_concurrent_decode", None, "{:.0f}"),
    ("floor", "floor_attainment", None, "{:.0%}"),
    ("switches", "role_switches", None, "{:.0f}"),
)


def _cell(metrics: Mapping[str, Any], key: str, stat: str | None, fmt: str) -> str:
    v = metrics.get(key)
    if stat is not None:
        v = v.get(stat) if isinstance(v, Mapping) else None
    return "-" if v is None else fmt.format(v)


def metrics_table(rows: Sequence[tuple[str, Mapping[str, Any]]], label: str = "system") -> str:
    """One row per (label, metrics); times in seconds, speeds in tokens/s."""
    header = [label, *(c[0] for c in COLUMNS)]
    body = [[name, *(_cell(m, k, s, f) for _, k, s, f in COLUMNS)] for name, m in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)

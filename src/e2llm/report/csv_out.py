"""Per-request CSVs: every timestamp of a `RequestRecord` plus the derived metrics."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from e2llm.sim.metrics import RequestRecord

DERIVED = (
    "waiting_s",
    "ttft_s",
    "second_token_gap_s",
    "tbt_s",
    "e2e_s",
    "kv_transfer_s",
    "prefill_tok_s",
    "decode_tok_s",
)


def write_requests_csv(records: Sequence[RequestRecord], path: str | Path) -> None:
    """One row per request, in id order; empty cells where a step did not happen."""
    names = [f.name for f in fields(RequestRecord)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, *DERIVED])
        for r in sorted(records, key=lambda r: r.id):
            row = [getattr(r, n) for n in names] + [getattr(r, d) for d in DERIVED]
            w.writerow(["" if v is None else v for v in row])

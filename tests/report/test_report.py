"""Tables, CSVs and plots from records and metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from e2llm.report.csv_out import write_requests_csv
from e2llm.report.plots import plot_cdfs, plot_sweep, plot_utilisation, utilisation_bins
from e2llm.report.table import metrics_table
from e2llm.sim.metrics import RequestRecord, summarize

RECS = [
    RequestRecord(0, 0.0, 10, 5, prefill_start_s=0.5, prefill_end_s=1.0, first_token_s=1.0, last_token_s=2.0),
    RequestRecord(1, 1.0, 10, 5, failed="too big"),
]


def test_table_has_a_row_per_system_and_dashes_for_missing() -> None:
    m = summarize(RECS)
    text = metrics_table([("e2llm", m), ("splitwise", summarize([]))])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("system")
    assert lines[2].split()[:3] == ["e2llm", "1", "1"]
    assert "-" in lines[3].split()


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_requests_csv(RECS, path)
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["ttft_s"] == "1.0" and rows[0]["failed"] == ""
    assert rows[1]["failed"] == "too big" and rows[1]["last_token_s"] == ""


def test_utilisation_bins_spread_intervals() -> None:
    # busy fully in [0, 1), half-used in [2, 4) over bins of 1 s
    got = utilisation_bins([(0.0, 1.0, 1.0), (2.0, 4.0, 0.5)], end_s=4.0, bins=4)
    assert got == pytest.approx(np.array([1.0, 0.0, 0.5, 0.5]))
    assert utilisation_bins([(0.5, 1.5, 1.0)], end_s=2.0, bins=2) == pytest.approx(np.array([0.5, 0.5]))


def test_plots_write_pngs(tmp_path: Path) -> None:
    m = summarize(RECS)
    plot_sweep([0.5, 1.0], {"e2llm": [m, m]}, "interval (s)", tmp_path / "s.png")
    plot_cdfs({"e2llm": RECS}, tmp_path / "c.png", "title")
    plot_utilisation({"a": [(0.0, 1.0, 1.0)]}, ["a", "b"], 2.0, tmp_path / "u.png")
    for name in ("s.png", "c.png", "u.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"

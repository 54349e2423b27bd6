"""`e2llm bench` against a real `e2llm serve` (SmolLM2-135M on the local emulated cluster)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from e2llm.bench.local_server import local_server
from e2llm.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_measures_a_live_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with local_server([], tmp_path / "serve.log", cwd=ROOT, ready_timeout_s=300) as server:
        workload = str(ROOT / "examples" / "workloads" / "smoke.yaml")
        out = tmp_path / "bench"
        argv = ["bench", server.url, "--workload", workload, "--max-requests", "4", "--max-seconds", "240"]
        code = main([*argv, "--json", "--out", str(out)])
        metrics = json.loads(capsys.readouterr().out)
    assert code == 0
    assert metrics["requests"] == 4 and metrics["completed"] == 4 and metrics["failed"] == 0
    # smoke.yaml asks for 16 output tokens: ignore_eos makes the server generate all of them.
    with open(out / "requests.csv") as f:
        assert [int(row["output_tokens"]) for row in csv.DictReader(f)] == [16] * 4
    assert metrics["throughput_tok_s"] > 0
    for key in ("ttft_s", "tbt_s", "e2e_s", "waiting_time_s"):
        assert metrics[key]["mean"] is not None and metrics[key]["mean"] >= 0
    assert metrics["e2e_s"]["mean"] > metrics["ttft_s"]["mean"] > 0

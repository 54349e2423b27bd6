"""`e2llm bench` command line: bad input exits 2 with one line; failures are reported, not hung on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchkit import Script, scripted_server

from e2llm.bench.local_server import free_port
from e2llm.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "examples" / "workloads" / "smoke.yaml")


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unreachable_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    err = _one_line_error(capsys, main(["bench", url, "--workload", SMOKE]))
    assert "cannot reach the server" in err and url in err


def test_url_without_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, main(["bench", "localhost:8000", "--workload", SMOKE]))
    assert "http://" in err


def test_missing_workload(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with scripted_server(Script()) as (url, _):
        err = _one_line_error(capsys, main(["bench", url, "--workload", str(tmp_path / "nope.yaml")]))
    assert "nope.yaml" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-seconds", "0"), ("--max-requests", "0"), ("--timeout", "-1"), ("--interval", "0")],
)
def test_bad_bounds(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    with scripted_server(Script()) as (url, _):
        err = _one_line_error(capsys, main(["bench", url, "--workload", SMOKE, flag, value]))
    assert flag in err


def test_server_errors_are_reported_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--workload", SMOKE, "--requests", "3", "--interval", "0.01", "--json"]
    with scripted_server(Script(status=500)) as (url, _):
        code = main(["bench", url, *args])
    out = capsys.readouterr()
    assert code == 1  # nothing completed
    metrics = json.loads(out.out)
    assert metrics["requests"] == 3 and metrics["failed"] == 3 and metrics["completed"] == 0
    assert "failed x3: HTTP 500" in out.err


def test_json_and_out_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    args = ["--workload", SMOKE, "--max-requests", "4", "--interval", "0.02", "--json", "--out", str(out_dir)]
    with scripted_server(Script(gap_s=0.001)) as (url, seen):
        code = main(["bench", url, *args])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["completed"] == 4 and metrics["failed"] == 0
    for key in ("waiting_time_s", "ttft_s", "tbt_s", "e2e_s"):
        assert metrics[key]["mean"] is not None and metrics[key]["p90"] is not None
    assert metrics["waiting_time_s"]["mean"] == pytest.approx(0.125)
    # The whole waiting time, from the server's /metrics histogram (malformed lines skipped).
    assert metrics["server"] == {"waiting_mean_s": pytest.approx(0.25), "ttft_mean_s": None}
    # The simulator's schema: the server's role switches during the run, floor attainment, goodput.
    assert metrics["role_switches"] == 2 and metrics["floor_attainment"] is not None
    assert metrics["second_token_s"]["mean"] is not None and metrics["goodput_rps"] > 0
    assert {p.name for p in out_dir.iterdir()} >= {"metrics.json", "requests.csv", "cdf.png"}
    assert all(b["model"] == "fake-model" for b in seen)

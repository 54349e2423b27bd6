"""`e2llm bench` against a real `e2llm serve` (SmolLM2-135M on the local emulated cluster)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from benchkit import free_port

from e2llm.cli import main

ROOT = Path(__file__).resolve().parents[2]
E2LLM = str(Path(sys.executable).parent / "e2llm")


@pytest.mark.slow
def test_bench_measures_a_live_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [E2LLM, "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.time() < deadline, "e2llm serve did not become ready"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        workload = str(ROOT / "examples" / "workloads" / "smoke.yaml")
        out = tmp_path / "bench"
        argv = ["bench", url, "--workload", workload, "--max-requests", "4", "--max-seconds", "240"]
        code = main([*argv, "--json", "--out", str(out)])
        metrics = json.loads(capsys.readouterr().out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    assert code == 0
    assert metrics["requests"] == 4 and metrics["completed"] == 4 and metrics["failed"] == 0
    # smoke.yaml asks for 16 output tokens: ignore_eos makes the server generate all of them.
    with open(out / "requests.csv") as f:
        assert [int(row["output_tokens"]) for row in csv.DictReader(f)] == [16] * 4
    assert metrics["throughput_tok_s"] > 0
    for key in ("ttft_s", "tbt_s", "e2e_s", "waiting_time_s"):
        assert metrics[key]["mean"] is not None and metrics[key]["mean"] >= 0
    assert metrics["e2e_s"]["mean"] > metrics["ttft_s"]["mean"] > 0

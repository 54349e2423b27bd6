"""`e2llm plan`: the table, --json / --out, and every bad input -> exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2llm.cli import main

ROOT = Path(__file__).resolve().parents[2]
TESTBED = str(ROOT / "examples/clusters/paper-testbed.yaml")
EXTENDED = str(ROOT / "examples/workloads/longreason-extended.yaml")

# Three small devices and a tiny model: plans in well under a second.
SMALL_CLUSTER = """devices:
  - {name: a, memory_gb: 1.5, tflops: 2, mem_bandwidth_gbs: 100}
  - {name: b, memory_gb: 1.5, tflops: 2, mem_bandwidth_gbs: 100}
  - {name: c, memory_gb: 1.5, tflops: 4, mem_bandwidth_gbs: 200}
network:
  bandwidth_mbps: 1000
  latency_ms: 0.5
"""
NETWORK = "network: {bandwidth_mbps: 1000, latency_ms: 0.5}\n"
WORKLOAD = """requests: 10
seed: 1
arrival: {process: fixed, interval_s: 1.0}
input_tokens: {dist: fixed, value: 128}
output_tokens: {dist: fixed, value: 64}
min_decode_tok_s: 5
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_plan(tmp_path: Path, *extra: str, cluster: str = SMALL_CLUSTER, model: str = "smollm2-135m") -> int:
    return main(
        ["plan", write(tmp_path, "cluster.yaml", cluster), "--model", model,
         "--workload", write(tmp_path, "w.yaml", WORKLOAD), *extra]
    )  # fmt: skip


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("e2llm plan: error: ")
    return err[0]


def test_table_shows_replicas_roles_layers_and_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_plan(tmp_path) == 0
    out = capsys.readouterr().out
    assert "PREFILL" in out and "DECODER" in out
    assert "[0," in out and "/1.5" in out  # layer ranges, memory used/available
    assert "tok/s" in out and "objective (bottleneck)" in out and "evaluations" in out
    assert "of the bound" in out and "req/s that no plan exceeds" in out


def test_json_and_out_write_the_same_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "plan.json"
    args = ("--json", "--out", str(out_file), "--objective", "max_rate", "--seed", "4", "--mixed", "off")
    assert run_plan(tmp_path, *args) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out_file.read_text())
    assert printed == written
    assert printed["objective_kind"] == "neg_max_rate" and printed["objective"] < 0
    assert printed["planner"]["seed"] == 4 and printed["planner"]["evaluations"] > 0
    assert printed["rate_rps"] == pytest.approx(-printed["objective"])
    assert 0 < printed["rate_rps"] <= printed["bound_rps"]
    assert printed["bound_share"] == printed["rate_rps"] / printed["bound_rps"]
    assert {r["role"] for r in printed["replicas"]} == {"PREFILL", "DECODER"}
    assert printed["cluster"]["devices"] and printed["model_spec"]["name"] == "smollm2-135m"


def test_exhaustive_and_memory_proportional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_plan(tmp_path, "--exhaustive", "--json") == 0
    assert json.loads(capsys.readouterr().out)["planner"]["generations"] == 0
    assert run_plan(tmp_path, "--system", "memory-proportional", "--json") == 0
    assert json.loads(capsys.readouterr().out)["system"] == "memory-proportional"


def test_paper_testbed_has_several_replicas_with_both_roles(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", TESTBED, "--model", "gpt-oss-20b", "--workload", EXTENDED, "--json"]
    assert main([*args, "--mixed", "off"]) == 0  # the method's roles
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["replicas"]) >= 3 and plan["planner"]["mixed"] is False
    assert {r["role"] for r in plan["replicas"]} == {"PREFILL", "DECODER"}
    for extra in ([], ["--mixed", "on"]):  # the default: MIXED replicas beside them where they are better
        assert main([*args, *extra]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert len(plan["replicas"]) >= 3 and plan["planner"]["mixed"] is True
        roles = {r["role"] for r in plan["replicas"]}
        assert {"PREFILL", "DECODER"} <= roles <= {"PREFILL", "DECODER", "MIXED"}


@pytest.mark.parametrize(
    ("cluster", "model", "extra", "expected"),
    [
        (
            SMALL_CLUSTER.replace("memory_gb: 1.5, tflops: 2", "preset: nope-9000", 1),
            "smollm2-135m",
            (),
            "nope-9000",
        ),
        (SMALL_CLUSTER, "no-such-model", (), "no-such-model"),
        (SMALL_CLUSTER.replace("memory_gb: 1.5, ", "", 1), "smollm2-135m", (), "memory_gb"),
        (SMALL_CLUSTER.replace("memory_gb: 1.5", "memory_gb: -1", 1), "smollm2-135m", (), "memory_gb"),
        (SMALL_CLUSTER + "  links: [{a: a, b: zz, bandwidth_mbps: 10}]\n", "smollm2-135m", (), "zz"),
        ("devices: [a, b\n", "smollm2-135m", (), "cluster.yaml"),
        (SMALL_CLUSTER, "smollm2-135m", ("--interval", "-1"), "--interval"),
        (SMALL_CLUSTER, "smollm2-135m", ("--system", "magic"), "unknown system"),
        (SMALL_CLUSTER, "llama-3.1-70b", (), "fits in no grouping"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cluster: str,
    model: str,
    extra: tuple[str, ...],
    expected: str,
) -> None:
    assert run_plan(tmp_path, *extra, cluster=cluster, model=model) == 2
    assert expected in one_error_line(capsys)


def test_70b_on_two_raspberry_pis_fits_nowhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pis = (
        """devices:
  - {name: pi1, preset: raspberry-pi-5-8gb}
  - {name: pi2, preset: raspberry-pi-5-8gb}
"""
        + NETWORK
    )
    assert run_plan(tmp_path, cluster=pis, model="llama-3.1-70b") == 2
    line = one_error_line(capsys)
    assert "llama-3.1-70b" in line and "fits in no grouping of the devices" in line and "GiB" in line


def test_exhaustive_refuses_more_than_7_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eight = "devices:\n" + "".join(
        f"  - {{name: d{i}, memory_gb: 1.5, tflops: 2, mem_bandwidth_gbs: 100}}\n" for i in range(8)
    )
    eight += NETWORK
    assert run_plan(tmp_path, "--exhaustive", cluster=eight) == 2
    assert "refuses clusters above 7 devices" in one_error_line(capsys)


def test_unwritable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_plan(tmp_path, "--out", str(tmp_path / "missing-dir" / "plan.json")) == 2
    assert "cannot write the plan" in one_error_line(capsys)


@pytest.mark.parametrize("budget", ["0", "-3", "100001", "ten", "1.5", ""])
def test_budget_out_of_range_is_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: str
) -> None:
    assert run_plan(tmp_path, "--budget", budget) == 2
    line = one_error_line(capsys)
    assert "--budget" in line and "[1, 100000]" in line


def test_budget_caps_the_generations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_plan(tmp_path, "--budget", "2", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["planner"]["generations"] <= 2 and plan["planner"]["budget"] == 2

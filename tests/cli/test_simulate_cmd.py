"""`e2llm simulate` and `e2llm compare`: outputs, and every bad input -> exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2llm.cli import main
from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.plan_json import plan_to_dict
from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_catalog import load_model
from e2llm.specs.units import GIB

MODEL = load_model("smollm2-135m")
L = MODEL.n_layers
WORKLOAD = """requests: 30
seed: 3
arrival: {process: poisson, rate_per_s: 2}
input_tokens: {dist: uniform, min: 16, max: 200}
output_tokens: {dist: fixed, value: 20}
min_decode_tok_s: 1
"""


def _cluster(memory_gb: float = 2.0) -> Cluster:
    devices = tuple(
        Device(n, memory_gb=memory_gb, tflops=1.0, mem_bandwidth_gbs=50.0) for n in ("a", "b", "c")
    )
    return Cluster(devices=devices, default_link=Link(1000.0, 0.5))


def _plan(cluster: Cluster | None = None, decoder_end: int = L, prefill_device: str = "a") -> dict[str, Any]:
    prefill = Replica(
        0,
        Role.PREFILL,
        (Stage(prefill_device, 0, L // 2, embedding=True), Stage("b", L // 2, L, lm_head=True)),
    )
    decoder = Replica(
        1, Role.DECODER, (Stage("c", 0, decoder_end, embedding=True, lm_head=True),), concurrency=4
    )
    plan = Plan(
        system="hand",
        model=MODEL.name,
        objective=0.0,
        objective_kind="bottleneck_s",
        replicas=(prefill, decoder),
        cluster=_cluster() if cluster is None else cluster,
        model_spec=MODEL,
    )
    return plan_to_dict(plan)


def _files(tmp_path: Path, plan: dict[str, Any] | None = None) -> tuple[str, str]:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan if plan is not None else _plan()))
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD)
    return str(p), str(w)


def _bad(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_simulate_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path)
    assert main(["simulate", plan, "--workload", w]) == 0
    out = capsys.readouterr().out
    assert "wait mean" in out and "hand" in out


def test_simulate_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path)
    assert main(["simulate", plan, "--workload", w, "--json", "--seed", "4"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert (m["requests"], m["completed"], m["failed"]) == (30, 30, 0)
    for key in ("waiting_time_s", "ttft_s", "tbt_s", "e2e_s", "prefill_tok_s", "decode_tok_s"):
        assert set(m[key]) == {"mean", "std", "p50", "p90", "p99"}
    assert m["throughput_tok_s"] > 0 and m["max_concurrent_decode"] >= 1


def test_simulate_sweep_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path)
    out = tmp_path / "out"
    assert main(["simulate", plan, "--workload", w, "--sweep", "0.5,2", "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["interval_s"] for p in doc["sweep"]] == [0.5, 2.0]
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "sweep.png", "cdf_interval0.5s.png", "requests_hand_interval2s.csv"} <= names
    assert "utilisation_hand_interval0.5s.png" in names
    rows = (out / "requests_hand_interval2s.csv").read_text().splitlines()
    assert len(rows) == 31 and rows[0].startswith("id,arrival_s")


def test_device_not_in_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path, _plan(prefill_device="zz"))
    _bad(capsys, ["simulate", plan, "--workload", w], "not in the plan's cluster", "'zz'")


def test_layers_do_not_cover_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path, _plan(decoder_end=L - 2))
    _bad(capsys, ["simulate", plan, "--workload", w], "replica 1", f"[0, {L})")


def test_decoder_cannot_hold_one_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # weights + overhead + 100 KB: less KV room than 36 tokens (the smallest request) need
    weights = CostModel(MODEL, Cluster((), Link(1, 1)), {}).weight_bytes(0, L, embedding=True, lm_head=True)
    gb = (weights + RUNTIME_OVERHEAD_BYTES + 100_000) / GIB
    plan, w = _files(tmp_path, _plan(cluster=_cluster(memory_gb=gb)))
    _bad(capsys, ["simulate", plan, "--workload", w], "no decoder can hold the KV of even one request")


def test_plan_without_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _plan()
    del d["cluster"]
    plan, w = _files(tmp_path, d)
    _bad(capsys, ["simulate", plan, "--workload", w], "embeds no cluster")


def test_missing_and_malformed_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, w = _files(tmp_path)
    _bad(capsys, ["simulate", str(tmp_path / "nope.json"), "--workload", w], "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"system": ')
    _bad(capsys, ["simulate", str(bad), "--workload", w], "malformed JSON")


def test_malformed_trace_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, _ = _files(tmp_path)
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:47.0000000,abc,44\n"
    )
    _bad(capsys, ["simulate", plan, "--workload", str(trace)], "t.csv:3", "ContextTokens")


@pytest.mark.parametrize("sweep", ["0.5,x", "0,1", "rate:-1"])
def test_bad_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: str) -> None:
    plan, w = _files(tmp_path)
    _bad(capsys, ["simulate", plan, "--workload", w, "--sweep", sweep], "--sweep")


def test_bad_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path)
    _bad(capsys, ["simulate", plan, "--workload", w, "--interval", "-1"], "--interval")


def _cluster_yaml(tmp_path: Path) -> str:
    p = tmp_path / "cluster.yaml"
    p.write_text(
        "devices:\n"
        + "".join(f"  - {{name: d{i}, memory_gb: 2, tflops: 1, mem_bandwidth_gbs: 50}}\n" for i in range(4))
        + "network: {bandwidth_mbps: 1000, latency_ms: 0.5}\n"
    )
    return str(p)


def test_compare_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, w = _files(tmp_path)
    argv = ["compare", _cluster_yaml(tmp_path), "--model", "smollm2-135m", "--workload", w]
    assert main([*argv, "--systems", "e2llm,splitwise,colocated,pipeline", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["systems"]) == {"e2llm", "splitwise", "colocated", "pipeline"}
    for m in doc["systems"].values():
        assert m["completed"] == 30 and m["plan"]["replicas"]
    assert doc["systems"]["splitwise"]["plan"]["scheduler"] == "splitwise"


def test_compare_mixed_by_default_plans_and_simulates_mixed_replicas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One device cannot hand KV to another: with `--mixed off` (the method's roles) there is no
    e2llm plan; by default (MIXED allowed), and with `--mixed on`, the device does both phases
    and serves every request."""
    _, w = _files(tmp_path)
    one = tmp_path / "one.yaml"
    one.write_text(
        "devices:\n  - {name: d0, memory_gb: 4, tflops: 1, mem_bandwidth_gbs: 50}\n"
        "network: {bandwidth_mbps: 1000, latency_ms: 0.5}\n"
    )
    argv = ["compare", str(one), "--model", "smollm2-135m", "--workload", w, "--systems", "e2llm", "--json"]
    _bad(capsys, [*argv, "--mixed", "off"], "PREFILL and a DECODER")
    for extra in ([], ["--mixed", "on"]):
        assert main([*argv, *extra]) == 0
        m = json.loads(capsys.readouterr().out)["systems"]["e2llm"]
        assert m["completed"] == 30 and [r["role"] for r in m["plan"]["replicas"]] == ["MIXED"]
        assert m["plan"]["planner"]["mixed"] is True


def test_compare_unknown_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, w = _files(tmp_path)
    argv = ["compare", _cluster_yaml(tmp_path), "--model", "smollm2-135m", "--workload", w]
    _bad(capsys, [*argv, "--systems", "e2llm,vllm"], "unknown system", "'vllm'")


def test_simulate_adapt_and_policy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path)
    assert main(["simulate", plan, "--workload", w, "--json", "--adapt", "off"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["role_switches"] == 0 and m["floor_attainment"] is not None
    for key in ("second_token_s", "kv_transfer_s"):
        assert set(m[key]) == {"mean", "std", "p50", "p90", "p99"}
    policy = tmp_path / "policy.yaml"
    policy.write_text("ttft_budget_s: 2\nmin_dwell_s: 5\nchunk_tokens: 256\n")
    assert main(["simulate", plan, "--workload", w, "--json", "--policy", str(policy)]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == 30


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("adaptive: true\n", ("policy.yaml: adaptive", "unknown policy setting")),
        ("prefill_high: 0\n", ("policy.yaml: prefill_high", "out of range")),
        ("min_gain: -0.5\n", ("policy.yaml: min_gain", "out of range [0, 100]")),
        ("- 1\n", ("policy", "mapping")),
    ],
)
def test_bad_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: tuple[str, ...]
) -> None:
    plan, w = _files(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    _bad(capsys, ["simulate", plan, "--workload", w, "--policy", str(policy)], *needles)


def test_bad_adapt_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, w = _files(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["simulate", plan, "--workload", w, "--adapt", "maybe"])
    assert err.value.code == 2
    assert "--adapt: invalid choice: 'maybe'" in capsys.readouterr().err


def test_mixed_replica_that_cannot_hold_a_chunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _plan()
    d["replicas"][1]["role"] = "MIXED"
    plan, w = _files(tmp_path, d)
    assert main(["simulate", plan, "--workload", w, "--json"]) == 0  # a 512-token chunk fits
    policy = tmp_path / "policy.yaml"
    policy.write_text("chunk_tokens: 65536\n")
    _bad(
        capsys,
        ["simulate", plan, "--workload", w, "--policy", str(policy)],
        "plan.json: replica 1.role",
        "65536-token chunk",
        "'MIXED'",
    )


def test_unknown_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _plan()
    d["replicas"][1]["role"] = "HYBRID"
    plan, w = _files(tmp_path, d)
    _bad(
        capsys,
        ["simulate", plan, "--workload", w],
        "replicas[1].role",
        "PREFILL, DECODER, MIXED or COLOCATED",
        "HYBRID",
    )

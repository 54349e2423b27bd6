"""A workload whose shape shifts mid-run, served live with the plan's roles fixed and adapting.

Issue 10 (runtime side): run-time role switching and drift re-planning on `e2llm serve`. The plan
is e2llm's for `examples/clusters/local-cpu-4x1.yaml` (four emulated devices, SmolLM2-135M) and
the workload's first shape, short chat prompts, at the maximum sustainable rate (written to
benchmarks/adapt/plan.json: four one-device replicas, two PREFILL and two DECODER).
The requests (`e2llm bench`, open loop) are `--requests` chat requests (96 in / 48 out on
average), then `--requests` long prompts (1,024 in / 16 out), one every `--interval` s: the
PREFILL replicas fall behind while the decoders idle.

For each round, `e2llm serve plan.json --adapt off` and `--adapt on` (same policy file, same
drift settings: the defaults) are started in turn, driven by `e2llm bench --json`, and stopped;
`/health` at the end says how many requests the server finished by outcome and the roles then.
Beside each measurement: the simulator's prediction of the same run (`e2llm.sim.simulate` of the
same plan, requests and policy settings on the cost model). Medians over the rounds, with the
load average before each run. Waiting is DESIGN's (prefill queue + decoder admission queue): the
server's histogram (`e2llm bench`'s "server" figures); the client-side waiting beside it sees the
prefill queue only. Writes benchmarks/adapt/results.json and prints a markdown table.

    .venv/bin/python benchmarks/bench_adapt.py [--rounds 1] [--requests 30] [--interval 2.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from e2llm.bench.local_server import local_server
from e2llm.cost.build import build_cost_model
from e2llm.plan.plan_json import load_plan
from e2llm.policy.settings import PolicySettings, settings_from_dict
from e2llm.sim.metrics import summarize
from e2llm.sim.simulator import ServingContext, simulate
from e2llm.specs.fields import read_yaml_mapping
from e2llm.specs.workload import Request, generate_requests
from e2llm.specs.workload_file import load_workload

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "adapt"
CLUSTER = ROOT / "examples" / "clusters" / "local-cpu-4x1.yaml"
MODEL = "smollm2-135m"
FLOOR = 5.0  # tok/s per request the plan keeps (an emulated CPU device decodes ~14 alone)
CHAT_IN = {"dist": "lognormal", "mean": 96, "cv": 0.3}
CHAT_OUT = {"dist": "lognormal", "mean": 48, "cv": 0.3}
LONG_IN, LONG_OUT = {"dist": "lognormal", "mean": 1024, "cv": 0.2}, {"dist": "fixed", "value": 16}
POLICY = {"ttft_budget_s": 5.0, "min_dwell_s": 10.0}  # both runs: only --adapt differs


def _workload(path: Path, n: int, interval: float, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    doc = {
        "requests": n,
        "seed": 1,
        "arrival": {"process": "poisson", "rate_per_s": 1.0 / interval},
        "input_tokens": inputs,
        "output_tokens": outputs,
        "min_decode_tok_s": FLOOR,
    }
    path.write_text(json.dumps(doc))


def shifted_requests(n: int, interval: float, folder: Path) -> list[Request]:
    """`n` chat requests, then `n` long prompts arriving after them."""
    _workload(folder / "chat.json", n, interval, CHAT_IN, CHAT_OUT)
    _workload(folder / "long.json", n, interval, LONG_IN, LONG_OUT)
    a = generate_requests(load_workload(folder / "chat.json"), 1)
    b = generate_requests(load_workload(folder / "long.json"), 1)
    shift = a[-1].arrival_s + interval
    return [*a, *(dataclasses.replace(r, id=r.id + n, arrival_s=r.arrival_s + shift) for r in b)]


def write_trace(requests: list[Request], path: Path) -> None:
    """Azure-format CSV of `requests` (what `e2llm bench --workload` replays as is)."""
    t0 = datetime.datetime(2024, 1, 1)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in requests:
        stamp = (t0 + datetime.timedelta(seconds=r.arrival_s)).strftime("%Y-%m-%d %H:%M:%S.%f")
        rows.append(f"{stamp},{r.input_tokens},{r.output_tokens}")
    path.write_text("\n".join(rows) + "\n")


def predicted(plan_path: Path, requests: list[Request], settings: PolicySettings) -> dict[str, Any]:
    plan = load_plan(plan_path)
    assert plan.cluster is not None and plan.model_spec is not None
    cost = build_cost_model(plan.model_spec, plan.cluster)
    result = simulate(plan, cost, requests, ServingContext(settings, min_decode_tok_s=FLOOR))
    doc = summarize(result.records, FLOOR, result.role_switches)
    doc["roles"] = [f"{t:.0f} s: replica {i} -> {role}" for t, i, role in result.roles]
    return doc


def measured(plan_path: Path, workload: Path, adapt: str, folder: Path) -> dict[str, Any]:
    args = [str(plan_path), "--adapt", adapt, "--policy", str(folder / "policy.json")]
    with local_server(args, folder / f"serve-{adapt}.log", cwd=ROOT) as server:
        bench = [str(Path(sys.executable).parent / "e2llm"), "bench", server.url, "--workload", str(workload)]
        done = subprocess.run(
            [*bench, "--json", "--max-seconds", "1500", "--timeout", "600"],
            capture_output=True,
            text=True,
            check=False,
        )
        health = httpx.get(f"{server.url}/health", timeout=30).json()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    if done.returncode != 0:
        raise RuntimeError(f"e2llm bench failed ({done.returncode}): {done.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(done.stdout)
    outcomes = {}
    for line in metrics.splitlines():
        if line.startswith("e2llm_requests_total{"):
            outcomes[line.split('outcome="')[1].split('"')[0]] = int(float(line.rsplit(" ", 1)[1]))
    doc["server_outcomes"] = outcomes
    doc["roles_at_end"] = health["roles"]
    doc["drift_replans"] = health.get("drift_replans")
    return doc


def waiting(m: dict[str, Any]) -> float:
    """Mean waiting as DESIGN defines it (prefill queue + decoder admission queue): the server's
    histogram for a measured run (the client sees only the prefill queue), the simulator's own."""
    server = m.get("server") or {}
    whole = server.get("waiting_mean_s")
    return float(whole if whole is not None else m["waiting_time_s"]["mean"])


def _row(name: str, m: dict[str, Any]) -> str:
    prefill_wait, ttft, e2e = (m[k]["mean"] for k in ("waiting_time_s", "ttft_s", "e2e_s"))
    second = m["second_token_s"]["mean"]
    lost = m["requests"] - m["completed"]
    return (
        f"| {name} | {waiting(m):.2f} | {prefill_wait:.2f} | {ttft:.2f} | {second:.2f} | {e2e:.1f} | "
        f"{m['floor_attainment']:.3f} | {m['completed']}/{m['requests']} | {lost} | {m['role_switches']} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--requests", type=int, default=30, help="requests of each shape")
    ap.add_argument("--interval", type=float, default=2.0, help="mean seconds between arrivals")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    requests = shifted_requests(args.requests, args.interval, OUT)
    write_trace(requests, OUT / "shift.csv")
    (OUT / "shift.yaml").write_text(f"trace: shift.csv\nmin_decode_tok_s: {FLOOR}\n")
    (OUT / "policy.json").write_text(json.dumps(POLICY))
    plan_path = OUT / "plan.json"
    e2llm = str(Path(sys.executable).parent / "e2llm")
    plan_cmd = [e2llm, "plan", str(CLUSTER), "--model", MODEL, "--workload", str(OUT / "chat.json")]
    subprocess.run([*plan_cmd, "--objective", "max_rate", "--out", str(plan_path)], check=True)
    base = settings_from_dict(read_yaml_mapping(OUT / "policy.json", "policy"), "policy.json")
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    loads: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for adapt in ("off", "on"):
            loads[adapt].append(os.getloadavg()[0])
            runs[adapt].append(measured(plan_path, OUT / "shift.yaml", adapt, OUT))
            print(_row(f"measured, adapt {adapt}", runs[adapt][-1]), file=sys.stderr, flush=True)
    sim = {
        a: predicted(plan_path, requests, dataclasses.replace(base, adapt=a == "on")) for a in ("off", "on")
    }
    median = {a: statistics.median(waiting(r) for r in runs[a]) for a in runs}
    doc = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "load_average": loads,
        "median_waiting_s": median,
        "measured": runs,
        "predicted": sim,
    }
    (OUT / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(
        "| run | waiting s | of it prefill queue s | TTFT s | second token s | E2E s | floor "
        "| completed | lost | role switches |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for adapt in ("off", "on"):
        for i, m in enumerate(runs[adapt]):
            print(_row(f"measured, adapt {adapt} (round {i + 1}, load {loads[adapt][i]:.1f})", m))
        print(_row(f"predicted, adapt {adapt}", sim[adapt]))
    print(f"median mean waiting: off {median['off']:.2f} s, on {median['on']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

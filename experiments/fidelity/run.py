"""Simulator fidelity: predicted vs measured latency of the same requests on this machine.

    .venv/bin/python experiments/fidelity/run.py            # ~6-8 min on a 2-core box

1. profile this machine (the runtime's own stage code, 1 torch thread: what each of the four
   emulated devices' stage actors gets on 2 cores) -> out/profile-start.json;
2. attach it to every device of examples/clusters/local-cpu.yaml -> out/cluster-*.yaml, plan the
   model with the e2llm planner for the medium load -> out/plan.json;
3. start `e2llm serve out/plan.json` and warm it up; then for each load (low, medium, high):
   re-profile while the server idles (out/profile-<load>.json), simulate the workload
   (experiments/fidelity/workload.yaml) at that load with it, and replay the very same requests
   (same seed, arrival times and token counts) with the bench client;
4. write experiments/fidelity/results.md (predicted vs measured mean and p90 of TTFT, TBT, E2E,
   waiting time, with the error) and out/results.json.

The server is always stopped at the end (its own process group, SIGINT then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from sampled_times import SampledTimes

from e2llm.bench.load import BenchSettings, run_load
from e2llm.bench.local_server import local_server
from e2llm.bench.server_metrics import WAITING, histogram_totals, mean_deltas, metric_sum, scrape
from e2llm.cost.build import build_cost_model
from e2llm.cost.model import CostModel
from e2llm.cost.profile import load_profile, make_profile, save_profile
from e2llm.plan.plan_json import save_plan
from e2llm.profile.bandwidth import memory_bandwidth_gbs
from e2llm.profile.measure import ProfileGrid, measure
from e2llm.sim.compare import Load, plan_system, run_plan
from e2llm.sim.metrics import RequestRecord, stats, summarize
from e2llm.specs.cluster_file import cluster_to_dict, load_cluster
from e2llm.specs.model_catalog import load_model, with_precision
from e2llm.specs.workload import Request
from e2llm.specs.workload_file import load_workload

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The sizes this workload reaches: prompts 32..160 tokens, contexts up to ~190, batches <= 16.
GRID = ProfileGrid(
    prefill_tokens=(16, 32, 64, 96, 128, 192, 256, 384),
    decode_batches=(1, 2, 3, 4, 6, 8, 12, 16),
    decode_contexts=(32, 64, 128, 256),
    head_tokens=(1, 2, 4, 8, 16),
    embed_tokens=(1, 64, 256),
    rounds=3,
    repeats=5,
)
METRICS = (
    ("TTFT", "ttft_s"),
    ("TBT", "tbt_s"),
    ("E2E", "e2e_s"),
    ("waiting (prefill queue)", "prefill_wait_s"),
)


def log(msg: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def profile_machine(out: Path, threads: int, tag: str) -> Path:
    torch.set_num_threads(threads)
    model = with_precision(load_model("smollm2-135m"), "fp32")  # the runtime serves fp32
    device = torch.device("cpu")
    samples = measure(model, device, torch.float32, GRID)
    prof = make_profile(
        device_name=f"local-cpu-{threads}thread",
        torch_device="cpu",
        dtype="fp32",
        model=model,
        samples=samples,
        memory_bandwidth_gbs=memory_bandwidth_gbs(device),
    )
    path = out / f"profile-{tag}.json"
    save_profile(prof, path)
    log(f"profile: fit error {dict((k, round(v, 3)) for k, v in prof.fit_error.items())} -> {path}")
    return path


def cluster_with_profile(cluster: Path, out: Path, profile: Path, memory_gb: float) -> Path:
    """`cluster` with `profile` (a file in `out`) on every device. memory_gb is raised: the runtime
    holds fp32 weights, twice what local-cpu.yaml's bf16 sizing assumes."""
    base = load_cluster(cluster)
    devices = tuple(dataclasses.replace(d, profile=profile.name, memory_gb=memory_gb) for d in base.devices)
    path = out / f"cluster-{profile.stem}.yaml"
    path.write_text(
        yaml.safe_dump(cluster_to_dict(dataclasses.replace(base, devices=devices)), sort_keys=False)
    )
    return path


def prefill_waits(records: list[RequestRecord] | tuple[RequestRecord, ...]) -> list[float]:
    """Arrival -> prefill start: the part of the waiting time the server reports per request."""
    return [r.prefill_start_s - r.arrival_s for r in records if r.completed and r.prefill_start_s is not None]


def decode_counters(url: str) -> tuple[float, float, float]:
    """(decode steps, their summed wall time, summed stage compute time) from the server's
    /metrics: the split of a token's time into stage compute and runtime overhead."""
    text = scrape(url) or ""
    steps = metric_sum(text, "e2llm_decode_step_seconds_count") or 0.0
    wall = metric_sum(text, "e2llm_decode_step_seconds_sum") or 0.0
    compute = metric_sum(text, "e2llm_stage_compute_seconds_total", phase="decode") or 0.0
    return steps, wall, compute


def bench(url: str, requests: tuple[Request, ...], max_seconds: float) -> list[RequestRecord]:
    settings = BenchSettings(
        base_url=url, model="smollm2-135m", max_seconds=max_seconds, request_timeout_s=60
    )
    return asyncio.run(run_load(requests, settings))


def error_pct(pred: float | None, meas: float | None) -> str:
    """Relative error; for measured values under 50 ms (near-empty queues) the absolute one,
    since a percentage of almost nothing says nothing."""
    if pred is None or meas is None:
        return "-"
    if abs(meas) < 0.05:
        return f"{(pred - meas) * 1e3:+.0f} ms"
    return f"{(pred - meas) / meas * 100:+.0f}%"


def _row(label: str, key: str, preds: list[dict[str, Any]], meas: dict[str, Any]) -> str:
    m, m90 = meas[key]["mean"], meas[key]["p90"]
    fresh = preds[0][key]
    if m is None or any(p[key]["mean"] is None for p in preds):
        return f"| {label} |" + " - |" * (2 * len(preds) + 4)
    cells = [f"{m:.3f}"]
    for p in preds:
        cells += [f"{p[key]['mean']:.3f}", error_pct(p[key]["mean"], m)]
    cells += [f"{m90:.3f}", f"{fresh['p90']:.3f}", error_pct(fresh["p90"], m90)]
    return f"| {label} | " + " | ".join(cells) + " |"


def table(load: dict[str, Any]) -> list[str]:
    """Measured vs predicted from the profile taken just before this load point (the fitted
    curves, as `e2llm simulate` uses them), from the profile taken at the start (what the plan
    was made with), and from the fresh profile's interpolated samples (a what-if)."""
    meas = load["measured"]
    preds = [load["predicted"], load["predicted_start_profile"], load["predicted_samples"]]
    rows = [
        "| metric | measured mean | predicted mean | error | pred. (start profile) | error "
        "| pred. (samples) | error | measured p90 | predicted p90 | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows += [_row(label, key, preds, meas) for label, key in METRICS]
    m = meas["server_waiting_mean_s"]
    cells = [f"{m:.3f}"]
    for p in preds:
        cells += [f"{p['waiting_time_s']['mean']:.3f}", error_pct(p["waiting_time_s"]["mean"], m)]
    rows.append("| waiting (total, mean) | " + " | ".join(cells) + " | | | |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default=str(HERE / "workload.yaml"))
    ap.add_argument("--cluster", default=str(ROOT / "examples" / "clusters" / "local-cpu.yaml"))
    ap.add_argument("--intervals", default="3,1.5,0.75", help="low,medium,high mean inter-arrival times (s)")
    ap.add_argument("--memory-gb", type=float, default=1.25, help="per emulated device (fp32 weights)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--worker-niceness", type=int, default=0, help="RAY_worker_niceness for the server")
    ap.add_argument("--out", default=str(HERE / "out"), help="folder for profile, plan, logs, raw results")
    ap.add_argument("--results", default=str(HERE / "results.md"), help="the table (markdown)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    intervals = [float(x) for x in args.intervals.split(",")]
    names = ["low", "medium", "high"][: len(intervals)]
    workload = load_workload(args.workload)

    t0 = time.time()
    log(f"machine load average (1 min): {os.getloadavg()[0]:.1f}")
    model = with_precision(load_model("smollm2-135m"), "fp32")
    start_profile = profile_machine(out, threads=1, tag="start")
    cluster_path = cluster_with_profile(Path(args.cluster), out, start_profile, args.memory_gb)
    plan = plan_system(
        "e2llm",
        build_cost_model(model, load_cluster(cluster_path)),
        workload,
        Load(intervals[len(intervals) // 2]),
    )
    plan_path = out / "plan.json"
    save_plan(plan, plan_path)

    def simulate(profile: Path, iv: float, sampled: bool = False) -> dict[str, Any]:
        """The plan simulated at mean interval `iv` with every device timed by `profile` (its
        fitted curves, as `e2llm simulate` does; `sampled`: its interpolated samples)."""
        cluster = load_cluster(cluster_with_profile(Path(args.cluster), out, profile, args.memory_gb))
        if sampled:
            cost = CostModel(
                model, cluster, {d.name: SampledTimes(load_profile(profile)) for d in cluster.devices}
            )
        else:
            cost = build_cost_model(model, cluster)
        run = run_plan(plan, cost, workload, Load(interval_s=iv))
        metrics = dict(run.metrics)
        metrics["prefill_wait_s"] = stats(prefill_waits(run.result.records))
        metrics["requests_list"] = [dataclasses.astuple(r) for r in run.requests]
        return metrics

    log(f"profiled and planned in {time.time() - t0:.0f} s")
    # Ray starts its workers (the stage actors) at niceness 15 by default, below everything else
    # on the box; `worker_niceness` 0 gives them the priority the profile was measured at (it
    # only matters when other processes compete).
    serve_env = {"RAY_worker_niceness": str(args.worker_niceness)}
    log(f"starting: RAY_worker_niceness={args.worker_niceness} e2llm serve {plan_path} (log {out}/serve.log)")
    results: dict[str, Any] = {
        "plan": str(plan_path),
        "niceness": os.nice(0),
        "worker_niceness": args.worker_niceness,
        "loads": {},
    }
    server_args = [str(plan_path), "--threads", "1"]
    with local_server(
        server_args, out / "serve.log", port=args.port, env=serve_env, cwd=ROOT, ready_timeout_s=300
    ) as served:
        url = served.url
        log("server ready; warming up")
        warm = tuple(Request(i, 0.5 * i, 64, 8) for i in range(4))
        bench(url, warm, 120)
        for name, iv in zip(names, intervals, strict=True):
            # Re-profile while the server idles, so the prediction uses the machine's speed now
            # (on a shared box it drifts by 2x within minutes), then measure at once.
            fresh = profile_machine(out, threads=1, tag=name)
            predicted = simulate(fresh, iv)
            requests = tuple(Request(*row) for row in predicted.pop("requests_list"))
            before = histogram_totals(url)
            counters = decode_counters(url)
            load_before = os.getloadavg()[0]
            span = requests[-1].arrival_s
            log(f"{name} load: {len(requests)} requests over {span:.0f} s")
            records = bench(url, requests, max_seconds=span + 300)
            server = mean_deltas(before, histogram_totals(url))
            steps, wall, compute = (b - a for a, b in zip(counters, decode_counters(url), strict=True))
            measured = summarize(records)
            measured["prefill_wait_s"] = stats(prefill_waits(records))
            measured["server_waiting_mean_s"] = server.get(WAITING, float("nan"))
            measured["decode_step_mean_s"] = wall / steps if steps else float("nan")
            measured["decode_compute_per_step_s"] = compute / steps if steps else float("nan")
            results["loads"][name] = {
                "interval_s": iv,
                "predicted": predicted,
                "predicted_start_profile": _drop_requests(simulate(start_profile, iv)),
                "predicted_samples": _drop_requests(simulate(fresh, iv, sampled=True)),
                "measured": measured,
                "loadavg_1min": [load_before, os.getloadavg()[0]],
            }
            log(f"{name}: measured {measured['completed']}/{measured['requests']} completed")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_results(results, Path(args.cluster), Path(args.results), time.time() - t0)
    return 0


def _drop_requests(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics.pop("requests_list", None)
    return metrics


def write_results(results: dict[str, Any], cluster: Path, path: Path, seconds: float) -> None:
    lines = [
        "# Simulator fidelity: predicted vs measured (generated by run.py)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s, "
        "on this 2-core x86 CPU box;"
        " command: `.venv/bin/python experiments/fidelity/run.py`. Times in seconds; error ="
        " (predicted - measured) / measured. Plan: `out/plan.json`; raw numbers: `out/results.json`.",
        f"Cluster: `{cluster.relative_to(ROOT) if cluster.is_relative_to(ROOT) else cluster}` with the"
        " measured profile on every device (`out/cluster.yaml`); the discussion is in README.md.",
        "",
    ]
    for name, r in results["loads"].items():
        meas = r["measured"]
        la = r["loadavg_1min"]
        lines += [
            f"## {name} load: mean interval {r['interval_s']:g} s "
            f"({meas['completed']}/{meas['requests']} completed, {meas['failed']} failed)",
            "",
            f"Machine load average (1 min) before / after: {la[0]:.1f} / {la[1]:.1f} "
            "(the run itself adds ~2-3; more means other processes shared the 2 cores); "
            f"experiment niceness {results['niceness']}, Ray worker niceness {results['worker_niceness']}.",
            "",
            *table(r),
            "",
            f"Server side: a decode step took {meas['decode_step_mean_s'] * 1e3:.0f} ms on average "
            "(driver's view, pipeline and Ray included), of which "
            f"{meas['decode_compute_per_step_s'] * 1e3:.0f} ms "
            "were stage compute (summed over the decoder's stages).",
            "",
        ]
    path.write_text("\n".join(lines))
    log(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

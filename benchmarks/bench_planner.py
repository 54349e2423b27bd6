"""Planner benchmark: planning time on random heterogeneous clusters, and GA vs exhaustive.

    .venv/bin/python benchmarks/bench_planner.py            # everything (~15-25 min on 2 cores)
    .venv/bin/python benchmarks/bench_planner.py --timing   # planning time only
    .venv/bin/python benchmarks/bench_planner.py --oracle --clusters 10

Clusters are drawn from the device presets (seeded): each device a random preset, on a wired LAN
(1 Gbit/s, 0.3 ms) or on Wi-Fi (200 Mbit/s, 3 ms; a pair's link is the slower of the two ends).
The load scales with the cluster: one request every 0.5 s x 7 / n_devices, so large clusters
are as busy as the paper's 7 devices at 0.5 s. Workload shape: LongReason extended (576 in /
588 out tokens, >= 15 tok/s per request). GA budget: the `GAParams` defaults (printed).
Times: wall-clock median and max, and the median CPU seconds of the planning process (robust
when other jobs share the 2 cores). Llama-3.1-70B is planned at q4 (~40 GB) so it needs groups.

Oracle comparison: 50 random clusters of 5-7 devices (sizes in rotation), GPT-OSS-20B, same
workload at 0.5 s. "optimum found": the GA's (objective, latency) equals the exhaustive search's
(objective to 1e-9, latency to 1e-6 relative). Gap: relative excess of the GA's objective, or of
its predicted latency when both objectives are 0 (both keep up).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import asdict

from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.ga import GAParams
from e2llm.plan.request import PlanRequest
from e2llm.plan.roles import predicted_latency
from e2llm.plan.systems import get_system
from e2llm.plan.types import Plan, PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_catalog import load_model
from e2llm.specs.presets import PRESETS

EDGE_PRESETS = sorted(p for p in PRESETS if p != "h200")  # edge/fog devices (+ a100/l4 fog servers)
WIRED = Link(bandwidth_mbps=1000.0, latency_ms=0.3)
WIFI = Link(bandwidth_mbps=200.0, latency_ms=3.0)


def random_cluster(n: int, rng: random.Random) -> Cluster:
    devices, wifi = [], []
    for i in range(n):
        name = f"d{i}"
        preset = rng.choice(EDGE_PRESETS)
        p = PRESETS[preset]
        devices.append(
            Device(name, p.memory_gb, p.tflops, p.mem_bandwidth_gbs, p.host_memory_gb, preset=preset)
        )
        if rng.random() < 0.3:
            wifi.append(name)
    links = {frozenset((a, d.name)): WIFI for a in wifi for d in devices if d.name != a}
    return Cluster(tuple(devices), WIRED, links, source=f"<random {n}>")


def shape(interval_s: float) -> WorkloadShape:
    return WorkloadShape(576.0, 588.0, interval_s, 15.0)


def plan(cluster: Cluster, model: str, interval_s: float, *, exhaustive: bool = False, seed: int = 1) -> Plan:
    precision = "q4" if model == "llama-3.1-70b" else None
    cost = build_cost_model(load_model(model, precision), cluster)
    return get_system("e2llm")(
        PlanRequest(cost, shape(interval_s), PlannerParams(seed=seed, exhaustive=exhaustive))
    )


def latency_s(p: Plan, w: WorkloadShape) -> float:
    """The planner's tie-break (`roles.predicted_latency`: service time + queueing), from the plan."""
    pre = [
        (
            (r.prefill_capacity_tok_s or 0.0) / w.mean_input_tokens,
            w.mean_input_tokens / (r.prefill_tok_s or 1.0),
        )
        for r in p.prefill_replicas
    ]
    dec = [
        (
            (r.decode_capacity_tok_s or 0.0) / w.mean_output_tokens,
            w.mean_output_tokens / (r.decode_tok_s_per_request or 1.0),
        )
        for r in p.decode_replicas
    ]
    return predicted_latency(
        sum(x for x, _ in pre),
        sum(x * t for x, t in pre),
        sum(x for x, _ in dec),
        sum(x * t for x, t in dec),
        w.interval_s,
    )


def timing(sizes: list[int], models: list[str], repeats: int) -> None:
    print(f"GA budget: {asdict(GAParams())}")
    print(
        f"{'devices':>7} {'model':<14} {'median s':>9} {'max s':>7} {'cpu s':>7} {'gens':>5} {'evals':>6} "
        f"{'replicas':>8} {'unused':>6}"
    )
    for n in sizes:
        for model in models:
            secs, cpu, gens, evals, reps, unused = [], [], [], [], [], []
            for r in range(repeats):
                cluster = random_cluster(n, random.Random(1000 * n + r))
                start, start_cpu = time.perf_counter(), time.process_time()
                try:
                    p = plan(cluster, model, 0.5 * 7 / n)
                except InputError as e:
                    print(f"{n:>7} {model:<14} no plan: {e}", flush=True)
                    continue
                secs.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
                gens.append(p.planner.generations)
                evals.append(p.planner.evaluations)
                reps.append(len(p.replicas))
                unused.append(len(p.unused_devices))
            if not secs:
                continue
            print(
                f"{n:>7} {model:<14} {statistics.median(secs):>9.2f} {max(secs):>7.2f} "
                f"{statistics.median(cpu):>7.2f} "
                f"{statistics.median(gens):>5.0f} {statistics.median(evals):>6.0f} "
                f"{statistics.median(reps):>8.0f} {statistics.median(unused):>6.0f}",
                flush=True,
            )


def oracle(n_clusters: int) -> None:
    w = shape(0.5)
    found, gaps, ex_secs, ga_secs = 0, [], [], []
    for i in range(n_clusters):
        n = 5 + i % 3
        cluster = random_cluster(n, random.Random(i))
        start = time.perf_counter()
        ex = plan(cluster, "gpt-oss-20b", 0.5, exhaustive=True)
        ex_secs.append(time.perf_counter() - start)
        start = time.perf_counter()
        ga = plan(cluster, "gpt-oss-20b", 0.5)
        ga_secs.append(time.perf_counter() - start)
        ex_lat, ga_lat = latency_s(ex, w), latency_s(ga, w)
        same = abs(ga.objective - ex.objective) <= 1e-9 and (
            ga_lat == ex_lat or abs(ga_lat - ex_lat) <= 1e-6 * ex_lat
        )
        found += same
        if ex.objective > 1e-9:
            gap = (ga.objective - ex.objective) / ex.objective
        elif ga.objective > 1e-9:
            gap = float("inf")
        else:
            gap = (ga_lat - ex_lat) / ex_lat
        gaps.append(gap)
        print(
            f"cluster {i:>2} ({n} devices): exhaustive {ex.objective:.4f} / {ex_lat:.2f} s, "
            f"GA {ga.objective:.4f} / {ga_lat:.2f} s, gap {gap:+.3%}, "
            f"exhaustive {ex_secs[-1]:.1f} s, GA {ga_secs[-1]:.2f} s",
            flush=True,
        )
    print(
        f"\noptimum found in {found}/{n_clusters} ({found / n_clusters:.0%}); worst gap {max(gaps):.3%}; "
        f"median time exhaustive {statistics.median(ex_secs):.1f} s, GA {statistics.median(ga_secs):.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timing", action="store_true", help="planning time only")
    ap.add_argument("--oracle", action="store_true", help="GA vs exhaustive only")
    ap.add_argument("--clusters", type=int, default=50, help="clusters in the oracle comparison")
    ap.add_argument("--repeats", type=int, default=3, help="clusters per size in the timing runs")
    ap.add_argument("--sizes", default="7,64,256", help="cluster sizes for the timing runs")
    ap.add_argument("--models", default="gpt-oss-20b,llama-3.1-8b,llama-3.1-70b")
    args = ap.parse_args()
    both = not (args.timing or args.oracle)
    if args.timing or both:
        timing([int(s) for s in args.sizes.split(",")], args.models.split(","), args.repeats)
    if args.oracle or both:
        oracle(args.clusters)


if __name__ == "__main__":
    main()

"""Planner benchmark: planning time, GA vs exhaustive, and plans against the upper bound.

    .venv/bin/python benchmarks/bench_planner.py --timing --sizes 64,256 --repeats 1
    .venv/bin/python benchmarks/bench_planner.py --oracle --clusters 100 --mixed on --workers 2
    .venv/bin/python benchmarks/bench_planner.py --bound

Clusters are drawn from the device presets (seeded): each device a random preset, on a wired LAN
(1 Gbit/s, 0.3 ms) or on Wi-Fi (200 Mbit/s, 3 ms; a pair's link is the slower of the two ends).
The load scales with the cluster: one request every 0.5 s x 7 / n_devices, so large clusters
are as busy as the paper's 7 devices at 0.5 s. Workload shape: LongReason extended (576 in /
588 out tokens, >= 15 tok/s per request). GA budget: the `GAParams` defaults (printed), the
generation cap set by `--budget`. Llama-3.1-70B is planned at q4 (~40 GB) so it needs groups.

Times are CPU seconds of the planning process (`time.process_time`: what an idle core would take;
the box is shared) and wall seconds; the planner is single-threaded. `--workers 2` runs the
clusters of `--oracle` / `--bound` in two processes (both cores); each row's CPU time is its own.

Oracle comparison: random clusters of 5-7 devices (sizes in rotation, cluster i seeded with i,
from `--first`), GPT-OSS-20B, same workload at 0.5 s. "same": the GA plan's (objective,
predicted latency) equals the exhaustive search's (objective to 1e-9, latency to 1e-6
relative). Gap: relative excess of the GA's objective, or of its predicted latency when both
objectives are 0 (both keep up).

Bound: the plan's sustainable rate (its capacity model) against `plan.bound.rate_bound` for the
roles allowed (`--mixed`), at the lengths plans are scored on, on the paper testbed (both
LongReason workloads) and on 10 random 16-64-device clusters, for the method's objective and
for max_rate (the plan that maximises the rate); and the bound's own CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.bound import rate_bound
from e2llm.plan.ga import GAParams
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system
from e2llm.plan.types import GA_BUDGET, Plan, PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_catalog import load_model
from e2llm.specs.presets import PRESETS
from e2llm.specs.workload_file import load_workload

ROOT = Path(__file__).resolve().parents[1]
EDGE_PRESETS = sorted(p for p in PRESETS if p != "h200")  # edge/fog devices (+ a100/l4 fog servers)
WIRED = Link(bandwidth_mbps=1000.0, latency_ms=0.3)
WIFI = Link(bandwidth_mbps=200.0, latency_ms=3.0)
_T = TypeVar("_T")
_R = TypeVar("_R")


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


def plan(
    cluster: Cluster,
    model: str,
    w: WorkloadShape,
    *,
    exhaustive: bool = False,
    seed: int = 1,
    mixed: bool = False,
    objective: str = "bottleneck",
    budget: int = GA_BUDGET,
) -> Plan:
    precision = "q4" if model == "llama-3.1-70b" else None
    cost = build_cost_model(load_model(model, precision), cluster)
    params = PlannerParams(seed=seed, objective=objective, exhaustive=exhaustive, mixed=mixed, budget=budget)
    return get_system("e2llm")(PlanRequest(cost, w, params))


def timed(fn: Callable[..., _T], *args: object, **kwargs: object) -> tuple[_T, float, float]:
    """fn(*args, **kwargs), its CPU seconds and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def each(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> Iterator[_R]:
    """fn over items, in order, each result as soon as it and those before it are done (so that
    a long run prints its rows as it goes)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)


def timing(sizes: list[int], models: list[str], repeats: int, budget: int, mixed: bool) -> None:
    roles = "on" if mixed else "off"
    print(f"GA budget: {asdict(GAParams())} with generations <= {budget}; MIXED roles {roles}")
    print(
        f"{'devices':>7} {'model':<14} {'cpu s':>7} {'max cpu':>7} {'wall s':>7} {'gens':>5} {'evals':>6} "
        f"{'replicas':>8} {'unused':>6} {'rate/bound':>10}"
    )
    med = statistics.median
    for n in sizes:
        for model in models:
            cpu, wall, gens, evals, reps, unused, share = [], [], [], [], [], [], []
            for r in range(repeats):
                cluster = random_cluster(n, random.Random(1000 * n + r))
                try:
                    p, c, w = timed(plan, cluster, model, shape(0.5 * 7 / n), mixed=mixed, budget=budget)
                except InputError as e:
                    print(f"{n:>7} {model:<14} no plan: {e}", flush=True)
                    continue
                cpu.append(c)
                wall.append(w)
                gens.append(p.planner.generations)
                evals.append(p.planner.evaluations)
                reps.append(len(p.replicas))
                unused.append(len(p.unused_devices))
                share.append(p.bound_share or 0.0)
            if not cpu:
                continue
            print(
                f"{n:>7} {model:<14} {med(cpu):>7.2f} {max(cpu):>7.2f} {med(wall):>7.2f} {med(gens):>5.0f} "
                f"{med(evals):>6.0f} {med(reps):>8.0f} {med(unused):>6.0f} {med(share):>10.0%}",
                flush=True,
            )


def _oracle_one(job: tuple[int, bool]) -> tuple[int, int, float, float, float, float, float, float, float]:
    i, mixed = job
    n = 5 + i % 3
    cluster = random_cluster(n, random.Random(i))
    w = shape(0.5)
    ex, ex_cpu, _ = timed(plan, cluster, "gpt-oss-20b", w, exhaustive=True, mixed=mixed)
    ga, ga_cpu, _ = timed(plan, cluster, "gpt-oss-20b", w, mixed=mixed)
    inf = float("inf")
    return (
        i,
        n,
        ex.objective,
        ex.latency_s if ex.latency_s is not None else inf,
        ga.objective,
        ga.latency_s if ga.latency_s is not None else inf,
        ex_cpu,
        ga_cpu,
        sum(r.role.value == "MIXED" for r in ga.replicas),
    )


def oracle(n_clusters: int, first: int, mixed: bool, workers: int) -> None:
    start = time.perf_counter()
    rows = []
    found, gaps = 0, []
    for row in each(_oracle_one, [(i, mixed) for i in range(first, first + n_clusters)], workers):
        rows.append(row)
        i, n, ex_obj, ex_lat, ga_obj, ga_lat, ex_cpu, ga_cpu, n_mixed = row
        same = abs(ga_obj - ex_obj) <= 1e-9 and (ga_lat == ex_lat or abs(ga_lat - ex_lat) <= 1e-6 * ex_lat)
        found += same
        if ex_obj > 1e-9:
            gap = (ga_obj - ex_obj) / ex_obj
        elif ga_obj > 1e-9:
            gap = float("inf")
        else:
            gap = (ga_lat - ex_lat) / ex_lat
        gaps.append(gap)
        print(
            f"cluster {i:>2} ({n} devices): exhaustive {ex_obj:.4f} / {ex_lat:.2f} s, "
            f"GA {ga_obj:.4f} / {ga_lat:.2f} s ({n_mixed} MIXED), gap {gap:+.3%}, "
            f"cpu exhaustive {ex_cpu:.1f} s, GA {ga_cpu:.2f} s",
            flush=True,
        )
    roles = "on" if mixed else "off"
    print(
        f"\nMIXED {roles}: optimum found in {found}/{n_clusters} ({found / n_clusters:.0%}); "
        f"worst gap {max(gaps):.3%}; median cpu exhaustive {statistics.median(r[6] for r in rows):.1f} s, "
        f"GA {statistics.median(r[7] for r in rows):.2f} s; wall {time.perf_counter() - start:.0f} s "
        f"on {workers} worker(s)"
    )


def _bound_one(job: tuple[str, int, bool]) -> str:
    name, n, mixed = job
    if name.startswith("paper"):
        cost = build_cost_model(
            load_model("gpt-oss-20b"), load_cluster(ROOT / "examples/clusters/paper-testbed.yaml")
        )
        w = WorkloadShape.of(load_workload(ROOT / f"examples/workloads/longreason-{name.split(':')[1]}.yaml"))
        cluster = cost.cluster
        model = "gpt-oss-20b"
    else:
        cluster = random_cluster(n, random.Random(7000 + n))
        model = ["gpt-oss-20b", "llama-3.1-8b"][n % 2]
        w = shape(0.5 * 7 / n)
    # the bound over the plans of the roles allowed (MIXED off: PREFILL / DECODER only), at
    # the lengths the planner scores plans on
    cost = build_cost_model(load_model(model), cluster)
    cpu = time.process_time()
    limit = rate_bound(cost, w.robust(), mixed=mixed)
    bound_cpu = time.process_time() - cpu
    out = []
    for objective in ("bottleneck", "max_rate"):
        try:
            p = plan(cluster, model, w, mixed=mixed, objective=objective)
        except InputError as e:
            return f"{name:<20} {model:<13} no plan: {e}"
        rate = p.rate_rps or 0.0
        out.append(f"{rate:>6.2f} {rate / limit:>5.0%}")
    return (
        f"{name:<20} {model:<13} {len(cluster.devices):>4} {1 / w.interval_s:>7.2f} {limit:>7.2f}  "
        + "   ".join(out)
        + f"   {bound_cpu:>5.2f}"
    )


def bound(mixed: bool, workers: int) -> None:
    rng = random.Random(99)
    sizes = sorted(rng.randint(16, 64) for _ in range(10))
    jobs = [("paper:extended", 7, mixed), ("paper:custom", 7, mixed)] + [
        (f"random-{n}", n, mixed) for n in sizes
    ]
    print(f"MIXED roles {'on' if mixed else 'off'}; rate and share of the bound per objective")
    print(
        f"{'cluster':<20} {'model':<13} {'devs':>4} {'arrive/s':>7} {'bound':>7}  bottleneck     max_rate"
        "      bound CPU-s"
    )
    for line in each(_bound_one, jobs, workers):
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timing", action="store_true", help="planning time")
    ap.add_argument("--oracle", action="store_true", help="GA vs exhaustive")
    ap.add_argument("--bound", action="store_true", help="plans against the upper bound")
    ap.add_argument("--clusters", type=int, default=100, help="clusters in the oracle comparison")
    ap.add_argument("--first", type=int, default=0, help="seed of the oracle's first cluster")
    ap.add_argument("--repeats", type=int, default=3, help="clusters per size in the timing runs")
    ap.add_argument("--sizes", default="7,64,256", help="cluster sizes for the timing runs")
    ap.add_argument("--models", default="gpt-oss-20b,llama-3.1-8b,llama-3.1-70b")
    ap.add_argument("--budget", type=int, default=GA_BUDGET, help="GA generations at most")
    ap.add_argument("--mixed", choices=("on", "off"), default="off", help="may the planner assign MIXED")
    ap.add_argument("--workers", type=int, default=1, help="processes for --oracle / --bound (2: both cores)")
    args = ap.parse_args()
    mixed = args.mixed == "on"
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if args.timing:
        timing(
            [int(s) for s in args.sizes.split(",")], args.models.split(","), args.repeats, args.budget, mixed
        )
    if args.oracle:
        oracle(args.clusters, args.first, mixed, args.workers)
    if args.bound:
        bound(mixed, args.workers)


if __name__ == "__main__":
    main()

"""Simulator speed: the full Azure conv trace (19,366 requests) on the paper testbed with
llama-3.1-8b, and the same trace replayed twice (38,732 requests) for the scaling ratio.

    .venv/bin/python benchmarks/bench_sim.py [--repeats 3]

Targets (issue 3): < 10 s for the full trace on one core; doubling the requests multiplies the
time by at most 2.2. The plan is e2llm's for the trace (planning is not timed); generating the
requests is not timed either. The simulator is single-threaded (one core); CPU time
(`time.process_time`) is reported, median of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from e2llm.cost.build import build_cost_model
from e2llm.sim.compare import Load, plan_system
from e2llm.sim.metrics import summarize
from e2llm.sim.simulator import simulate
from e2llm.sim.validate import check_plan, check_serves
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model
from e2llm.specs.workload import generate_requests
from e2llm.specs.workload_file import load_workload

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared/traces/azure-2023-conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cost = build_cost_model(
        load_model("llama-3.1-8b"), load_cluster(ROOT / "examples/clusters/paper-testbed.yaml")
    )
    workload = load_workload(TRACE)
    plan = plan_system("e2llm", cost, workload, Load(), seed=1)
    check_plan(plan, cost)
    for r in plan.replicas:
        print(f"replica {r.id}: {r.role.value} x{r.concurrency} on {'+'.join(r.devices)}")
    rows = workload.requests
    times: dict[int, float] = {}
    for n in (rows, 2 * rows):
        requests = generate_requests(load_workload(TRACE, requests=n))
        check_serves(plan, cost, requests)
        samples = []
        for _ in range(args.repeats):
            t0 = time.process_time()
            result = simulate(plan, cost, requests)
            samples.append(time.process_time() - t0)
        times[n] = statistics.median(samples)
        m = summarize(result.records)
        print(
            f"{n} requests: median {times[n]:.2f} s CPU ({n / times[n]:.0f} req/s, "
            f"{result.events / times[n]:.0f} events/s, {result.events} events); "
            f"completed {m['completed']}, failed {m['failed']}, mean wait {m['waiting_time_s']['mean']:.1f} s"
        )
    ratio = times[2 * rows] / times[rows]
    print(f"doubling the requests: x{ratio:.2f} time")


if __name__ == "__main__":
    main()

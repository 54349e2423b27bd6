"""`e2llm simulate PLAN.json --workload W`: predict how a plan serves a workload."""

from __future__ import annotations

import argparse
import json

from e2llm.cli.options import add_workload
from e2llm.cli.policy_args import add_policy_arguments, policy_from_args
from e2llm.cli.progress import progress_bar
from e2llm.cli.sim_output import add_load_arguments, loads_from_args, print_table, simulate_json, write_out
from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.plan_json import load_plan
from e2llm.sim.compare import Run, run_plan
from e2llm.specs.workload_file import load_workload

EXAMPLES = """examples:
  e2llm plan examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-extended.yaml --out plan.json
  e2llm simulate plan.json --workload examples/workloads/longreason-extended.yaml
  e2llm simulate plan.json --workload examples/workloads/azure-conv.yaml --rate 0.5 --json
  e2llm simulate plan.json --workload examples/workloads/longreason-extended.yaml \\
      --sweep 0.5,1,2,3 --out results/
  e2llm simulate plan.json --workload examples/workloads/longreason-custom.yaml --adapt off

The plan embeds its cluster and model, so no cluster file is needed. --json prints the metrics
object of DESIGN "Metrics JSON" (a sweep: {"sweep": [{"interval_s": ..., <metrics>}, ...]}).
--adapt off keeps the plan's roles fixed (the paper); by default replicas switch role at run time
when one phase's normalised backlog crosses its threshold (tuned with --policy FILE)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="predict latency and throughput of a plan on a workload (discrete-event simulation)",
        description="Simulate a plan on a workload: waiting time, TTFT, TBT, E2E, throughput.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("plan", metavar="PLAN.json", help="a plan written by `e2llm plan --out`")
    add_workload(p)
    add_load_arguments(p)
    add_policy_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    source = str(args.plan)
    if plan.cluster is None:
        raise InputError(source, "the plan embeds no cluster (write it with `e2llm plan --out`)")
    if plan.model_spec is None:
        raise InputError(source, "the plan embeds no model spec (write it with `e2llm plan --out`)")
    cost = build_cost_model(plan.model_spec, plan.cluster)
    workload = load_workload(args.workload, requests=args.requests)
    loads = loads_from_args(args)
    settings = policy_from_args(args)
    runs: list[Run] = []
    with progress_bar("simulating", "load") as progress:
        for load in loads:
            progress(len(runs), len(loads), load.label)
            runs.append(run_plan(plan, cost, workload, load, args.seed, where=source, settings=settings))
        progress(len(runs), len(loads))
    doc = simulate_json(runs)
    if args.out:
        write_out(args.out, runs, loads, plan.cluster.names, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"plan {source}: system {plan.system}, model {plan.model}, {len(plan.replicas)} replicas")
        print_table(runs, loads)
        if args.out:
            print(f"\nwrote {args.out}/")
    return 0

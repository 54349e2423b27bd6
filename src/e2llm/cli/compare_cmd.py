"""`e2llm compare CLUSTER --model M --workload W`: plan with several systems, simulate each on the
same requests, print one table."""

from __future__ import annotations

import argparse
import json

from e2llm.cli.options import add_mixed, add_precision, add_workload
from e2llm.cli.policy_args import add_policy_arguments, policy_from_args
from e2llm.cli.progress import progress_bar
from e2llm.cli.sim_output import add_load_arguments, compare_json, loads_from_args, print_table, write_out
from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.systems import system_names
from e2llm.plan.types import Objective
from e2llm.sim.compare import compare
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model
from e2llm.specs.workload_file import load_workload

DEFAULT_SYSTEMS = "e2llm,splitwise,colocated,pipeline,memory-proportional"

EXAMPLES = """examples:
  e2llm compare examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-extended.yaml
  e2llm compare examples/clusters/paper-testbed.yaml --model llama-3.1-8b \\
      --workload examples/workloads/azure-conv.yaml --systems e2llm,splitwise --rate 0.5
  e2llm compare examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-custom.yaml --sweep 0.5,1,2,3 --out results/ --json

Each system is planned for each load and simulated on identical requests. --json prints
{"systems": {"<name>": {<metrics>, "plan": {...}}}} (a sweep: {"sweep": [{"interval_s": ...,
"systems": {...}}, ...]}). --adapt off keeps e2llm's roles fixed (the paper); Splitwise always
runs its own mixed pool."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="plan with several systems and simulate them on the same requests",
        description="Compare placement systems (e2llm and the baselines) on one cluster and workload.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cluster", metavar="CLUSTER", help="cluster YAML")
    p.add_argument("--model", required=True, help="catalog name, HF model dir, config.json or GGUF file")
    add_precision(p)
    add_workload(p)
    p.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated (default: {DEFAULT_SYSTEMS})")
    p.add_argument(
        "--objective",
        choices=tuple(Objective),
        default=Objective.BOTTLENECK.value,
        help="what the planners optimise: the method's bottleneck (default) or the maximum request rate",
    )
    add_mixed(p)
    add_load_arguments(p, "the requests and the planners")
    add_policy_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    known = system_names()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems:
        raise InputError("--systems", "name at least one system", args.systems)
    for s in systems:
        if s not in known:
            raise InputError("--systems", f"unknown system; choose from {', '.join(known)}", s)
    cluster = load_cluster(args.cluster)
    model = load_model(args.model, args.precision)
    cost = build_cost_model(model, cluster)
    workload = load_workload(args.workload, requests=args.requests)
    loads = loads_from_args(args)
    with progress_bar("planning and simulating", "run") as progress:
        runs = compare(
            systems,
            cost,
            workload,
            loads,
            args.seed,
            progress,
            Objective(args.objective),
            policy_from_args(args),
            mixed=args.mixed == "on",
        )
    doc = compare_json(runs, loads)
    if args.out:
        write_out(args.out, runs, loads, cluster.names, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{cluster.source}: {len(cluster.devices)} devices; model {model.name}")
        print(f"workload {workload.source}")
        print_table(runs, loads)
        if args.out:
            print(f"\nwrote {args.out}/")
    return 0

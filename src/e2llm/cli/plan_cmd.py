"""`e2llm plan CLUSTER --model M --workload W`: plan a deployment and print it (or its JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from e2llm.cli.options import add_arrivals, add_mixed, add_precision, add_seed, add_workload
from e2llm.cli.progress import progress_bar
from e2llm.cost.build import build_cost_model
from e2llm.errors import InputError
from e2llm.plan.plan_json import MAX_BUDGET, plan_to_dict, save_plan
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system, system_names
from e2llm.plan.types import GA_BUDGET, Objective, ObjectiveKind, Plan, PlannerParams, Replica, Role
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.report.plan_figure import plan_figure
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model
from e2llm.specs.workload_file import load_workload

EXAMPLES = """examples:
  e2llm plan examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-extended.yaml
  e2llm plan examples/clusters/wifi-edge-fog.yaml --model llama-3.1-8b --precision q4 \\
      --workload examples/workloads/longreason-custom.yaml --interval 1.0 --out plan.json
  e2llm plan examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-extended.yaml --out plan.png   # a picture
  e2llm plan examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-extended.yaml --objective max_rate --json
  e2llm plan examples/clusters/paper-testbed.yaml --model gpt-oss-20b \\
      --workload examples/workloads/longreason-extended.yaml --exhaustive   # <= 7 devices

Objectives: "bottleneck" (the method's: seconds by which the slower phase's time per request
exceeds the arrival interval; 0 = keeps up, then lower predicted latency wins) or "max_rate"
(highest sustainable request rate, reported negated). Lower is better for both."""

PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="plan a deployment: device groups, layer split, PREFILL/DECODER roles",
        description="Plan how to serve MODEL on the devices of CLUSTER for WORKLOAD.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cluster", metavar="CLUSTER", help="cluster YAML (devices, network)")
    p.add_argument("--model", required=True, metavar="M", help="catalog name, HF config/model dir, or GGUF")
    add_workload(p)
    p.add_argument(
        "--system",
        default="e2llm",
        metavar="S",
        help=f"planner: {', '.join(system_names())} (default e2llm)",
    )
    add_seed(p, "the planner's search")
    p.add_argument("--objective", choices=tuple(Objective), default=Objective.BOTTLENECK.value)
    p.add_argument(
        "--exhaustive", action="store_true", help="exhaustive search instead of the GA (<= 7 devices)"
    )
    add_mixed(p)
    p.add_argument(
        "--budget",
        metavar="N",
        default=str(GA_BUDGET),
        help=f"the GA's budget: at most N generations, 1-{MAX_BUDGET} (default {GA_BUDGET}; it stops early)",
    )
    add_precision(p)
    add_arrivals(p, " (overrides W)")
    p.add_argument("--json", action="store_true", help="print the plan JSON instead of the table")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="also write the plan: its JSON (PLAN.json), or a picture by suffix (.png, .svg, .pdf)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    planner = get_system(args.system)
    cluster = load_cluster(args.cluster)
    model = load_model(args.model, args.precision)
    workload = load_workload(args.workload, interval_s=args.interval, rate_per_s=args.rate)
    shape = WorkloadShape.of(workload)
    cost = build_cost_model(model, cluster)
    params = PlannerParams(
        seed=workload.seed if args.seed is None else args.seed,
        objective=Objective(args.objective),
        exhaustive=args.exhaustive,
        mixed=args.mixed == "on",
        budget=parse_budget(args.budget),
    )
    with progress_bar("planning (GA generations)", "gen") as progress:
        plan = planner(PlanRequest(cost, shape, params, progress))
    if args.out:
        _write_out(plan, Path(args.out))
    if args.json:
        print(json.dumps(plan_to_dict(plan), indent=2))
    else:
        print(format_plan(plan, shape))
        if args.out:
            print(f"wrote {Path(args.out)}")
    return 0


def parse_budget(text: str) -> int:
    """`--budget`: a whole number of GA generations in [1, MAX_BUDGET]."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BUDGET:
        raise InputError("--budget", f"must be a whole number of GA generations in [1, {MAX_BUDGET}]", text)
    return value


def _write_out(plan: Plan, path: Path) -> None:
    """The plan JSON, or its picture when `path` names an image format."""
    try:
        if path.suffix.lower() in PICTURE_SUFFIXES:
            plan_figure(plan).savefig(path, dpi=120)
        else:
            save_plan(plan, path)
    except OSError as e:
        raise InputError(str(path), f"cannot write the plan: {e.strerror}") from None


def format_plan(plan: Plan, shape: WorkloadShape) -> str:
    """The readable table: one block per replica, one row per device."""
    memory = {d.name: d.memory_gb for d in plan.cluster.devices} if plan.cluster is not None else {}
    lines = [
        f"system {plan.system}, model {plan.model}: {len(plan.replicas)} replicas ({_role_counts(plan)})",
        f"workload: {shape.mean_input_tokens:g} input / {shape.mean_output_tokens:g} output tokens "
        "on average, "
        f"one request every {shape.interval_s:g} s, >= {shape.min_decode_tok_s:g} tok/s per request",
        "",
    ]
    header = (
        f"{'replica':<8}{'role':<9}{'conc':>5}  {'device':<14}{'layers':<10}{'memory GiB':>16}  {'speed':<40}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for r in plan.replicas:
        speed = _speed(r)
        for k, s in enumerate(r.stages):
            extras = ("E" if s.embedding else "") + ("H" if s.lm_head else "")
            avail = memory.get(s.device)
            mem = f"{s.memory_gb:.1f}/{avail:g}" if avail is not None else f"{s.memory_gb:.1f}"
            bottleneck = " *" if s.device == r.bottleneck_device else ""
            first = k == 0
            lines.append(
                f"{(str(r.id) if first else ''):<8}{(r.role.value if first else ''):<9}"
                f"{(str(r.concurrency) if first else ''):>5}  {s.device + bottleneck:<14}"
                f"{f'[{s.start},{s.end}){extras}':<10}{mem:>16}  {speed if first else ''}"
            )
    lines.append("")
    lines.append("* bottleneck stage; E/H: holds the embedding / LM head; memory: planned use/available")
    if plan.unused_devices:
        lines.append(f"unused devices: {', '.join(plan.unused_devices)}")
    pre_caps = [r.prefill_capacity_tok_s for r in plan.prefill_replicas]
    dec_caps = [r.decode_capacity_tok_s for r in plan.decode_replicas]
    if all(c is not None for c in pre_caps + dec_caps):
        prefill = sum(c or 0.0 for c in pre_caps) / shape.mean_input_tokens
        decode = sum(c or 0.0 for c in dec_caps) / shape.mean_output_tokens
        lines.append(
            f"capacity: prefill {prefill:.2f} req/s, decode {decode:.2f} req/s "
            f"(arrivals {1 / shape.interval_s:.2f}/s)"
        )
    if plan.rate_rps is not None and plan.bound_rps and plan.bound_share is not None:
        lines.append(
            f"sustainable: {plan.rate_rps:.2f} req/s, {plan.bound_share:.0%} of the bound "
            f"{plan.bound_rps:.2f} req/s that no plan exceeds on this cluster"
        )
    if plan.objective_kind is ObjectiveKind.NEG_MAX_RATE:
        lines.append(f"objective (max_rate): {-plan.objective:.3f} req/s sustainable")
    else:
        lines.append(
            f"objective (bottleneck): {plan.objective:.3f} s by which the slower phase exceeds the interval"
        )
    st = plan.planner
    seed = plan.params.seed if plan.params is not None else None
    lines.append(
        f"planner: {st.evaluations} evaluations, {st.generations} generations, {st.seconds:.2f} s, "
        f"seed {seed}"
    )
    return "\n".join(lines)


def _role_counts(plan: Plan) -> str:
    counts = [(role, sum(r.role is role for r in plan.replicas)) for role in Role]
    return ", ".join(f"{n} {role.value}" for role, n in counts if n)


def _speed(r: Replica) -> str:
    parts = []
    if r.prefill_tok_s is not None:
        cap = f" ({r.prefill_capacity_tok_s:.0f} pipelined)" if r.prefill_capacity_tok_s else ""
        parts.append(f"prefill {r.prefill_tok_s:.0f} tok/s{cap}")
    if r.decode_tok_s_per_request is not None:
        cap = f" ({r.decode_capacity_tok_s:.0f} total)" if r.decode_capacity_tok_s else ""
        parts.append(f"decode {r.decode_tok_s_per_request:.1f} tok/s/request{cap}")
    return ", ".join(parts)

"""`e2llm serve [CLUSTER|PLAN.json]`: serve a model the way a plan says, over an OpenAI API.

~350 lines, most of them the argument list and its help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from e2llm.cli.logs import add_log_level
from e2llm.cli.options import (
    DTYPES,
    add_device,
    add_dtype,
    add_mixed,
    add_precision,
    add_workload,
    device_choice,
    dtype_choice,
)
from e2llm.cli.policy_args import add_policy_arguments, policy_from_args
from e2llm.errors import InputError
from e2llm.plan.types import Plan, PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.drift import DriftSettings
from e2llm.runtime.http_limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INFLIGHT,
    HttpLimits,
)

DEFAULT_CLUSTER = Path("examples/clusters/local-cpu.yaml")
DEFAULT_WORKLOAD = Path("examples/workloads/chat.yaml")
DEFAULT_MODEL = "smollm2-135m"
API_KEY_ENV = "E2LLM_API_KEY"
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
DEFAULT_DRAIN_S = 30.0
CONNECTIONS_PER_INFLIGHT = 4
# A local cluster of 4 emulated CPU devices, used when examples/clusters/local-cpu.yaml is absent.
_BUILTIN_CLUSTER = {
    "devices": [
        {"name": f"cpu{i}", "memory_gb": 2.0, "tflops": 0.2, "mem_bandwidth_gbs": 10.0} for i in range(4)
    ],
    "network": {"bandwidth_mbps": 10000, "latency_ms": 0.1},
}
# examples/workloads/chat.yaml's shape, used when that file is absent.
_BUILTIN_SHAPE = WorkloadShape(mean_input_tokens=256, mean_output_tokens=128, interval_s=1.0)

EXAMPLES = """examples:
  e2llm serve                                   # built-in SmolLM2-135M on a local emulated cluster
  e2llm serve examples/clusters/local-cpu.yaml --port 8001
  e2llm serve plan.json --ray-address 192.168.1.10:6379   # devices run `ray start` (docs/deploy.md)
  e2llm serve examples/clusters/local-cpu.yaml --workload examples/workloads/smoke.yaml --precision bf16
  E2LLM_API_KEY=secret e2llm serve --host 0.0.0.0 --allowed-hosts llm.lab,192.168.1.10
  e2llm serve plan.json --adapt off                # the paper: the plan's roles stay fixed

--adapt on (the default, as for `e2llm simulate`, so that a prediction is of what is served):
e2llm's role controller moves replicas between PREFILL and DECODER while serving when one pool
queues and the move raises the rate both sustain (stop routing, drain, switch, publish; weights
stay loaded). --policy FILE sets its thresholds. /health and /metrics show roles and switches.
With it, a lasting drift of the live workload (--drift-*) re-plans roles and concurrency for the
observed shape, regrouping the devices only if new roles cannot absorb it.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible API on Ray",
        description="Plan (or load a plan) and serve the model on Ray: one stage actor per (replica, "
        "device), PREFILL -> DECODER KV hand-off, continuous batching, OpenAI-compatible HTTP API.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="?", help="cluster YAML (planned at start) or plan JSON (served as is)")
    p.add_argument("--model", help=f"catalog name ({DEFAULT_MODEL}), HF model folder or .gguf file")
    p.add_argument("--system", default="e2llm", help="planner used for a cluster YAML (default e2llm)")
    add_workload(
        p, False, f": the shape planned and re-planned for (default: the plan's own, else {DEFAULT_WORKLOAD})"
    )
    add_precision(p, "weight precision the planner plans for")
    add_mixed(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ray-address", help="join this Ray cluster (HEAD:6379) instead of starting one")
    p.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, which keeps it out of `ps`)",
    )
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated names the Host header may carry ('*': any); default: the loopback "
        "names for a loopback --host, the address itself for another, any IP address and this "
        "machine's names for 0.0.0.0",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="on SIGINT/SIGTERM, seconds requests in flight get to finish before they are ended "
        "with 503 (a second signal ends them at once; default %(default)s)",
    )
    add_device(p, auto=True)
    add_dtype(p, "fp32")
    p.add_argument("--threads", type=int, help="torch threads per stage actor (default: cores // actors)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger bodies get 413 (default 1 MiB)",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=DEFAULT_MAX_INFLIGHT,
        help="generation requests served at once; more get 429 + Retry-After (default %(default)s)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help="seconds a connection has to send a complete request head (default %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help="seconds to receive a request body; slower gets 408 (default %(default)s)",
    )
    add_policy_arguments(p)
    d = DriftSettings()
    p.add_argument(
        "--drift-threshold",
        type=float,
        default=d.threshold,
        metavar="F",
        help="re-plan roles and concurrency (regroup only if roles cannot absorb it) when the live arrival "
        "rate or mean input/output tokens change by this factor - 1 (0: never; default %(default)s)",
    )
    p.add_argument(
        "--drift-window",
        type=float,
        default=d.window_s,
        metavar="S",
        help="seconds of recent requests the live workload is measured over (default %(default)s)",
    )
    p.add_argument(
        "--drift-hold",
        type=float,
        default=d.hold_s,
        metavar="S",
        help="seconds a drift must last before the re-plan (default %(default)s)",
    )
    add_log_level(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2llm.runtime.plans import describe_plan, plan_devices, runnable_plan
    from e2llm.runtime.weights import ModelSource, default_model_source, prepare_model
    from e2llm.specs.workload_file import load_workload

    if not 0 < args.port < 65536:
        raise InputError("--port", "must be in 1..65535", args.port)
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads", "must be >= 1", args.threads)
    device_choice(args.device, auto=True)
    dtype_choice(args.dtype)
    limits = _limits(args)
    if not 0 <= args.drain_s <= 86400:
        raise InputError("--drain-s", "must be in [0, 86400] seconds", args.drain_s)
    policy = policy_from_args(args)
    drift = DriftSettings(args.drift_threshold, args.drift_window, args.drift_hold)
    # Read, then dropped from the environment: the Ray processes started later inherit it
    # otherwise, and the key belongs to this API process only.
    api_key = args.api_key or os.environ.pop(API_KEY_ENV, None) or None
    target = Path(args.target) if args.target else None
    if target is not None and not target.is_file():
        raise InputError(str(target), "file not found")
    plan_from_file = None
    if target is not None and target.suffix == ".json":
        from e2llm.plan.plan_json import load_plan

        plan_from_file = load_plan(target)
    model_name = args.model or (plan_from_file.model if plan_from_file else DEFAULT_MODEL)
    if model_name != DEFAULT_MODEL and not args.model and not Path(model_name).exists():
        raise InputError(
            "--model",
            f"the plan's model {model_name!r} has no local weights here; pass --model PATH "
            "(an HF model folder or a .gguf file)",
        )
    workload = load_workload(args.workload) if args.workload else None
    source = default_model_source() if model_name == DEFAULT_MODEL else ModelSource.from_path(model_name)
    print(f"e2llm serve: preparing model {source.name} ({source.path})", flush=True)
    prepared = prepare_model(source)
    if plan_from_file is not None:
        plan = _as_served(plan_from_file, WorkloadShape.of(workload) if workload else None, args.precision)
    else:
        shape, seed = (WorkloadShape.of(workload), workload.seed) if workload else _default_workload()
        mixed = args.mixed == "on"
        plan = _plan_cluster(target, model_name, args.system, shape, args.precision, seed, mixed)
    where = str(target or "plan")
    plan = runnable_plan(plan, prepared.config.n_layers, where)
    _check(plan, where)
    print(describe_plan(plan), flush=True)
    return _serve(args, plan, prepared, plan_devices(plan), api_key, limits, policy, drift)


def _limits(args: argparse.Namespace) -> HttpLimits:
    """The HTTP limits from the flags; each must be positive (and finite)."""
    for flag, value in (("--max-body-bytes", args.max_body_bytes), ("--max-inflight", args.max_inflight)):
        if value < 1:
            raise InputError(flag, "must be >= 1", value)
    for flag, secs in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not 0 < secs <= 86400:
            raise InputError(flag, "must be in (0, 86400] seconds", secs)
    return HttpLimits(args.max_body_bytes, args.max_inflight, args.header_timeout, args.body_timeout)


def _default_workload() -> tuple[WorkloadShape, int]:
    """The shape and seed to plan for when neither `--workload` nor the plan names one."""
    from e2llm.specs.workload_file import load_workload

    if not DEFAULT_WORKLOAD.is_file():
        return _BUILTIN_SHAPE, 1
    workload = load_workload(DEFAULT_WORKLOAD)
    return WorkloadShape.of(workload), workload.seed


def _as_served(plan: Plan, shape: WorkloadShape | None, precision: str | None) -> Plan:
    """A plan file served as is. Re-planning uses `shape` when given, else the plan's own
    (a plan written before plans carried their workload gets the default one)."""
    if precision is not None and precision != plan.precision:
        made_for = plan.precision or "its model's published precision"
        raise InputError(
            "--precision",
            f"the plan was made for {made_for}; plan again with `e2llm plan --precision`",
            precision,
        )
    return dataclasses.replace(plan, workload=shape or plan.workload or _default_workload()[0])


def _check(plan: Plan, where: str) -> None:
    """The checks `e2llm simulate` makes, on the plan's own cluster and model when it embeds them."""
    from e2llm.cost.build import build_cost_model
    from e2llm.sim.validate import check_plan

    cost = None
    if plan.cluster is not None and plan.model_spec is not None:
        cost = build_cost_model(plan.model_spec, plan.cluster)
    check_plan(plan, cost, where)


def _plan_cluster(
    cluster_path: Path | None,
    model: str,
    system: str,
    shape: WorkloadShape = _BUILTIN_SHAPE,
    precision: str | None = None,
    seed: int = 1,
    mixed: bool = True,
) -> Plan:
    """Plan with `system` on `cluster_path` (or the local default cluster) for `shape` (`mixed`:
    may e2llm's planner assign MIXED replicas)."""
    from e2llm.cost.build import build_cost_model
    from e2llm.plan.request import PlanRequest
    from e2llm.plan.systems import get_system
    from e2llm.specs.cluster_file import cluster_from_dict, load_cluster
    from e2llm.specs.model_catalog import load_model

    if cluster_path is None and DEFAULT_CLUSTER.is_file():
        cluster_path = DEFAULT_CLUSTER
    cluster = (
        load_cluster(cluster_path)
        if cluster_path
        else cluster_from_dict(_BUILTIN_CLUSTER, "built-in cluster")
    )
    spec = load_model(model, precision)
    planner = get_system(system)
    cost = build_cost_model(spec, cluster)
    return planner(PlanRequest(cost, shape, PlannerParams(seed=seed, mixed=mixed)))


def _serve(
    args: argparse.Namespace,
    plan: Plan,
    prepared: object,
    devices: list[str],
    api_key: str | None,
    limits: HttpLimits,
    policy: PolicySettings,
    drift: DriftSettings,
) -> int:
    from e2llm.runtime.cluster import start_ray, stop_ray
    from e2llm.runtime.http_access import allowed_hosts_for
    from e2llm.runtime.http_limits import hardened_h11
    from e2llm.runtime.http_serve import serve_http
    from e2llm.runtime.server import ServedModel, create_app
    from e2llm.runtime.service import Deployment, LaunchOptions
    from e2llm.runtime.text import encode_chat, max_token_chars
    from e2llm.runtime.weights import PreparedModel

    assert isinstance(prepared, PreparedModel)
    n_actors = sum(len(r.stages) for r in plan.replicas)
    if args.device in ("cuda", "mps") and not args.ray_address:
        import torch

        available = torch.cuda.is_available() if args.device == "cuda" else torch.backends.mps.is_available()
        if not available:
            raise InputError("--device", "not available on this machine", args.device)
    options = LaunchOptions(
        torch_device=args.device,
        dtype=DTYPES[dtype_choice(args.dtype)],
        threads=args.threads,
        enforce_device_memory=args.ray_address is not None,
    )
    start_ray(devices, args.ray_address)
    deployment = None
    try:
        print(f"e2llm serve: starting {n_actors} stage actors on {len(devices)} devices", flush=True)
        deployment = Deployment.launch(plan, str(prepared.path), options, policy, drift)
        cfg = prepared.config
        tokenizer = prepared.tokenizer()
        served = ServedModel(
            name=plan.model if not args.model else prepared.name,
            tokenizer=tokenizer,
            context_len=cfg.max_context,
            eos_ids=frozenset(cfg.eos_token_ids),
            encode_chat=encode_chat,
            max_token_chars=max_token_chars(tokenizer),
        )
        hosts = allowed_hosts_for(args.host, args.allowed_hosts.split(",") if args.allowed_hosts else None)
        app = create_app(deployment, served, api_key, limits, hosts)
        auth = "API key required" if api_key else "no API key"
        base = f"http://{args.host}:{args.port}"
        print(f"e2llm serve: {served.name} on {base}/v1 ({auth}); dashboard at {base}/", flush=True)
        serve_http(
            app,
            deployment,
            args.drain_s,
            host=args.host,
            port=args.port,
            log_level="warning",
            http=hardened_h11(limits.header_timeout_s),
            timeout_keep_alive=KEEP_ALIVE_S,
            # Open connections (idle ones included) beyond this get a plain 503 from uvicorn.
            limit_concurrency=CONNECTIONS_PER_INFLIGHT * limits.max_inflight,
        )
    finally:
        if deployment is not None:
            deployment.kill_actors()
        stop_ray()
        sys.stdout.flush()
    return 0

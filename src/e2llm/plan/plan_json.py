"""Plan <-> JSON (DESIGN "Plan JSON"). Reading validates and names the bad field.

Old plan files still load: a plan without `workload`, planner parameters (`planner.objective`,
`planner.exhaustive`), `cluster` or `model_spec` (or with `{}` for them) gets `None` there, and
a plan with a planner seed but no `planner.objective` was made for the objective its
`objective_kind` measures.

~320 lines because the reader checks every field of the plan contract and names the bad one; its
field readers check JSON a program wrote (types, bounds), where `specs/fields.py` reads what a
user wrote (units, ranges, unknown keys).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from e2llm.errors import InputError
from e2llm.plan.types import (
    GA_BUDGET,
    Objective,
    ObjectiveKind,
    Plan,
    PlannerParams,
    PlannerStats,
    Replica,
    Role,
    Scheduler,
    Stage,
)
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.cluster_file import cluster_from_dict, cluster_to_dict
from e2llm.specs.fields import field_where
from e2llm.specs.input_file import parse_json, read_input_text
from e2llm.specs.model_spec import MAX_LAYERS, model_from_dict, model_to_dict

_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    params = plan.params
    return {
        "system": plan.system,
        "model": plan.model,
        "objective": plan.objective,
        "objective_kind": plan.objective_kind.value,
        "scheduler": plan.scheduler.value,
        "replicas": [
            {
                "id": r.id,
                "role": r.role.value,
                "concurrency": r.concurrency,
                "devices": [
                    {
                        "name": s.device,
                        "layers": [s.start, s.end],
                        "embedding": s.embedding,
                        "lm_head": s.lm_head,
                        "memory_gb": s.memory_gb,
                    }
                    for s in r.stages
                ],
                "prefill_tok_s": r.prefill_tok_s,
                "decode_tok_s_per_request": r.decode_tok_s_per_request,
                "bottleneck_device": r.bottleneck_device,
                "prefill_capacity_tok_s": r.prefill_capacity_tok_s,
                "decode_capacity_tok_s": r.decode_capacity_tok_s,
            }
            for r in plan.replicas
        ],
        "unused_devices": list(plan.unused_devices),
        "planner": {
            "evaluations": plan.planner.evaluations,
            "seconds": plan.planner.seconds,
            "seed": None if params is None else params.seed,
            "generations": plan.planner.generations,
            "objective": None if params is None else params.objective.value,
            "exhaustive": None if params is None else params.exhaustive,
            "mixed": None if params is None else params.mixed,
            "budget": None if params is None else params.budget,
        },
        "cluster": None if plan.cluster is None else cluster_to_dict(plan.cluster),
        "model_spec": None if plan.model_spec is None else model_to_dict(plan.model_spec),
        "workload": None if plan.workload is None else _shape_to_dict(plan.workload),
        "precision": plan.precision,  # informative: `model_spec` holds each part's format
        "rate_rps": plan.rate_rps,
        "bound_rps": plan.bound_rps,
        "bound_share": plan.bound_share,  # informative: rate_rps / bound_rps
        "latency_s": plan.latency_s,
    }


def _shape_to_dict(shape: WorkloadShape) -> dict[str, float]:
    return {
        "mean_input_tokens": shape.mean_input_tokens,
        "mean_output_tokens": shape.mean_output_tokens,
        "interval_s": shape.interval_s,
        "min_decode_tok_s": shape.min_decode_tok_s,
        "kv_context_tokens": shape.kv_context_tokens,
        "robust_input_tokens": shape.robust_input_tokens,
        "robust_output_tokens": shape.robust_output_tokens,
    }


INT64_MAX = 2**63 - 1
MAX_CONCURRENCY = 1_000_000  # decode batch of one replica; beyond any device's memory
MAX_BUDGET = 100_000  # GA generations


def _get(d: Any, key: str, where: str, kind: type | tuple[type, ...], allow_empty: bool = False) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise InputError(where, f"missing field '{key}'")
    value = d[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise InputError(f"{where}.{key}", "wrong type", value)
    if isinstance(value, str) and not value.strip() and not allow_empty:
        raise InputError(f"{where}.{key}", "must be a non-empty string", value)
    return value


def _opt(d: dict[str, Any], key: str, where: str, kind: type, default: Any) -> Any:
    """An optional field: absent or null -> `default`, else it must have type `kind`."""
    if d.get(key) is None:
        return default
    return _get(d, key, where, kind, allow_empty=True)


def _opt_number(d: dict[str, Any], key: str, where: str, default: float | None = None) -> float | None:
    """An optional finite number >= 0 (speeds, memory, seconds); absent or null -> `default`."""
    value = d.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= sys.float_info.max:
        raise InputError(f"{where}.{key}", "must be a finite number >= 0", value)
    return float(value)


def _opt_int(
    d: dict[str, Any], key: str, where: str, default: int | None, maximum: int = INT64_MAX
) -> int | None:
    """An optional integer in [0, maximum]; absent or null -> `default`."""
    value: int | None = _opt(d, key, where, int, default)
    if value is not None and not 0 <= value <= maximum:
        raise InputError(f"{where}.{key}", f"must be in [0, {maximum}]", value)
    return value


def _stage(s: Any, sw: str) -> Stage:
    if not isinstance(s, dict):
        raise InputError(sw, "a device entry must be a JSON object", s)
    layers = _get(s, "layers", sw, list)
    if len(layers) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise InputError(f"{sw}.layers", "must be [start, end) integers", layers)
    if not 0 <= layers[0] <= layers[1] <= MAX_LAYERS:
        raise InputError(f"{sw}.layers", f"need 0 <= start <= end <= {MAX_LAYERS}", layers)
    return Stage(
        device=_get(s, "name", sw, str),
        start=layers[0],
        end=layers[1],
        embedding=_opt(s, "embedding", sw, bool, False),
        lm_head=_opt(s, "lm_head", sw, bool, False),
        memory_gb=_opt_number(s, "memory_gb", sw, 0.0) or 0.0,
    )


def _choice(d: dict[str, Any], key: str, where: str, kind: type[_E], default: _E | None = None) -> _E:
    """A choice spelled as its JSON value; absent or null -> `default` (None: required)."""
    if default is None:
        text = _get(d, key, where, str)
    else:
        text = _opt(d, key, where, str, None)
        if text is None:
            return default
    try:
        return kind(text)
    except ValueError:
        *others, last = kind
        raise InputError(field_where(where, key), f"must be {', '.join(others)} or {last}", text) from None


def _replica(r: Any, i: int, where: str) -> Replica:
    role = _choice(r, "role", where, Role)
    stages = tuple(_stage(s, f"{where}.devices[{j}]") for j, s in enumerate(_get(r, "devices", where, list)))
    if not stages:
        raise InputError(f"{where}.devices", "a replica needs at least one device", [])
    concurrency = _opt_int(r, "concurrency", where, 1, maximum=MAX_CONCURRENCY)
    if concurrency is None or concurrency < 1:
        raise InputError(f"{where}.concurrency", "must be >= 1", concurrency)
    return Replica(
        id=_opt_int(r, "id", where, i) or 0,
        role=role,
        stages=stages,
        concurrency=concurrency,
        prefill_tok_s=_opt_number(r, "prefill_tok_s", where),
        decode_tok_s_per_request=_opt_number(r, "decode_tok_s_per_request", where),
        bottleneck_device=_opt(r, "bottleneck_device", where, str, ""),
        prefill_capacity_tok_s=_opt_number(r, "prefill_capacity_tok_s", where),
        decode_capacity_tok_s=_opt_number(r, "decode_capacity_tok_s", where),
    )


def _params(stats: dict[str, Any], where: str, kind: ObjectiveKind) -> PlannerParams | None:
    """What the planner was asked; None for a plan no planner made (no seed)."""
    seed = _opt(stats, "seed", where, int, None)
    if seed is None:
        return None
    default = next(o for o in Objective if o.kind is kind)  # old plans: the objective they measure
    objective = _choice(stats, "objective", where, Objective, default)
    if objective.kind is not kind:
        raise InputError(f"{where}.objective", f"does not match objective_kind {kind.value}", objective.value)
    budget = _opt_int(stats, "budget", where, GA_BUDGET, maximum=MAX_BUDGET)
    if budget is None or budget < 1:
        raise InputError(f"{where}.budget", f"must be in [1, {MAX_BUDGET}]", budget)
    return PlannerParams(
        seed=seed,
        objective=objective,
        exhaustive=_opt(stats, "exhaustive", where, bool, False),
        # absent in plans written before the field: their planner assigned PREFILL/DECODER only,
        # so re-planning one asks that question again (not the newer default, MIXED allowed)
        mixed=_opt(stats, "mixed", where, bool, False),
        budget=budget,
    )


def _shape(d: dict[str, Any], key: str, source: str) -> WorkloadShape | None:
    w = _opt(d, key, source, dict, None)
    if w is None:
        return None
    where = f"{source}: {key}"

    def number(name: str, positive: bool = True) -> float:
        if positive:
            value = _get(w, name, where, float)
            if not 0 < value <= sys.float_info.max:
                raise InputError(f"{where}.{name}", "must be a finite number > 0", value)
            return float(value)
        return _opt_number(w, name, where, 0.0) or 0.0

    return WorkloadShape(
        mean_input_tokens=number("mean_input_tokens"),
        mean_output_tokens=number("mean_output_tokens"),
        interval_s=number("interval_s"),
        min_decode_tok_s=number("min_decode_tok_s", positive=False),
        kv_context_tokens=number("kv_context_tokens", positive=False),
        robust_input_tokens=number("robust_input_tokens", positive=False),
        robust_output_tokens=number("robust_output_tokens", positive=False),
    )


def _embedded(
    d: dict[str, Any], key: str, source: str, read: Callable[[dict[str, Any], str], _T]
) -> _T | None:
    """An embedded cluster or model spec; absent, null or `{}` (hand-written plans) -> None."""
    value = _opt(d, key, source, dict, None)
    return read(value, f"{source}: {key}") if value else None


def plan_from_dict(d: Any, source: str = "<plan>", base_dir: Path | None = None) -> Plan:
    """Build a Plan from parsed JSON; every structural problem is an InputError naming the field.

    Types are checked here, the embedded cluster and model spec included (relative profile paths
    in the cluster are resolved against `base_dir` when given); whether the plan fits its
    cluster and model (devices exist, layers cover the model, memory) is checked by whoever runs
    it (`sim.validate.check_plan`).
    """
    if not isinstance(d, dict):
        raise InputError(source, "a plan must be a JSON object", type(d).__name__)
    replicas = []
    ids: set[int] = set()
    for i, r in enumerate(_get(d, "replicas", source, list)):
        where = f"{source}: replicas[{i}]"
        if not isinstance(r, dict):
            raise InputError(where, "a replica must be a JSON object", r)
        replica = _replica(r, i, where)
        if replica.id in ids:
            raise InputError(f"{where}.id", "duplicate replica id", replica.id)
        ids.add(replica.id)
        replicas.append(replica)
    if not replicas:
        raise InputError(f"{source}: replicas", "a plan needs at least one replica", [])
    stats = _opt(d, "planner", source, dict, {})
    sw = f"{source}: planner"
    unused = _opt(d, "unused_devices", source, list, [])
    if not all(isinstance(name, str) for name in unused):
        raise InputError(f"{source}.unused_devices", "must be a list of device names", unused)
    objective = d.get("objective")
    kind = _choice(d, "objective_kind", source, ObjectiveKind, ObjectiveKind.BOTTLENECK_S)
    return Plan(
        system=_get(d, "system", source, str),
        model=_get(d, "model", source, str),
        # null, or NaN as json.dumps writes it: not computed
        objective=float("nan") if objective is None else _get(d, "objective", source, float),
        objective_kind=kind,
        replicas=tuple(replicas),
        unused_devices=tuple(unused),
        planner=PlannerStats(
            evaluations=_opt_int(stats, "evaluations", sw, 0) or 0,
            seconds=_opt_number(stats, "seconds", sw, 0.0) or 0.0,
            generations=_opt_int(stats, "generations", sw, 0) or 0,
        ),
        scheduler=_choice(d, "scheduler", source, Scheduler, Scheduler.JSQ),
        cluster=_embedded(d, "cluster", source, lambda c, where: cluster_from_dict(c, where, base_dir)),
        model_spec=_embedded(d, "model_spec", source, model_from_dict),
        workload=_shape(d, "workload", source),
        params=_params(stats, sw, kind),
        rate_rps=_opt_number(d, "rate_rps", source),
        bound_rps=_opt_number(d, "bound_rps", source),
        latency_s=_opt_number(d, "latency_s", source),
    )


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read and type-check a plan JSON file (size, encoding and nesting bounded by
    `specs.input_file`); relative profile paths in its cluster are relative to its folder."""
    p = Path(path)
    return plan_from_dict(parse_json(read_input_text(p, "plan"), str(p)), str(p), base_dir=p.parent)

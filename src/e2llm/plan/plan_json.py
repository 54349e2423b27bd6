"""Plan <-> JSON (DESIGN "Plan JSON"). Reading validates and names the bad field."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.plan.types import Plan, PlannerStats, Replica, Role, Stage
from e2llm.specs.input_file import parse_json, read_input_text
from e2llm.specs.model_spec import MAX_LAYERS


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "system": plan.system,
        "model": plan.model,
        "objective": plan.objective,
        "objective_kind": plan.objective_kind,
        "scheduler": plan.scheduler,
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
                        "memory_gb": round(s.memory_gb, 3),
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
            "seconds": round(plan.planner.seconds, 4),
            "seed": plan.planner.seed,
            "generations": plan.planner.generations,
        },
        "cluster": plan.cluster,
        "model_spec": plan.model_spec,
    }


INT64_MAX = 2**63 - 1
MAX_CONCURRENCY = 1_000_000  # decode batch of one replica; beyond any device's memory


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


def _replica(r: Any, i: int, where: str) -> Replica:
    role_text = _get(r, "role", where, str)
    try:
        role = Role(role_text)
    except ValueError:
        raise InputError(f"{where}.role", "must be PREFILL, DECODER, MIXED or COLOCATED", role_text) from None
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


def plan_from_dict(d: Any, source: str = "<plan>") -> Plan:
    """Build a Plan from parsed JSON; every structural problem is an InputError naming the field.

    Types are checked here; whether the plan fits its cluster and model (devices exist, layers
    cover the model, memory) is checked by whoever runs it (`sim.validate.check_plan`). The
    embedded `cluster` and `model_spec` must be objects; their fields are validated when used.
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
    return Plan(
        system=_get(d, "system", source, str),
        model=_get(d, "model", source, str),
        # null, or NaN as json.dumps writes it: not computed
        objective=float("nan") if objective is None else _get(d, "objective", source, float),
        objective_kind=_opt(d, "objective_kind", source, str, "bottleneck_s"),
        replicas=tuple(replicas),
        unused_devices=tuple(unused),
        planner=PlannerStats(
            evaluations=_opt_int(stats, "evaluations", sw, 0) or 0,
            seconds=_opt_number(stats, "seconds", sw, 0.0) or 0.0,
            seed=_opt(stats, "seed", sw, int, None),
            generations=_opt_int(stats, "generations", sw, 0) or 0,
        ),
        scheduler=_opt(d, "scheduler", source, str, "jsq"),
        cluster=_opt(d, "cluster", source, dict, {}),
        model_spec=_opt(d, "model_spec", source, dict, {}),
    )


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read and type-check a plan JSON file (size, encoding and nesting bounded by
    `specs.input_file`)."""
    p = Path(path)
    return plan_from_dict(parse_json(read_input_text(p, "plan"), str(p)), str(p))

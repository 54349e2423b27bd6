"""Plan <-> JSON (DESIGN "Plan JSON"). Reading validates and names the bad field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.plan.types import Plan, PlannerStats, Replica, Role, Stage


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


def _get(d: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise InputError(where, f"missing field '{key}'")
    value = d[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise InputError(f"{where}.{key}", "wrong type", value)
    return value


def plan_from_dict(d: Any, source: str = "<plan>") -> Plan:
    """Build a Plan from parsed JSON; every structural problem is an InputError naming the field."""
    if not isinstance(d, dict):
        raise InputError(source, "a plan must be a JSON object", type(d).__name__)
    replicas = []
    for i, r in enumerate(_get(d, "replicas", source, list)):
        where = f"{source}: replicas[{i}]"
        role_text = _get(r, "role", where, str)
        try:
            role = Role(role_text)
        except ValueError:
            raise InputError(f"{where}.role", "must be PREFILL, DECODER or COLOCATED", role_text) from None
        stages = []
        for j, s in enumerate(_get(r, "devices", where, list)):
            sw = f"{where}.devices[{j}]"
            layers = _get(s, "layers", sw, list)
            if len(layers) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
                raise InputError(f"{sw}.layers", "must be [start, end) integers", layers)
            if not 0 <= layers[0] <= layers[1]:
                raise InputError(f"{sw}.layers", "need 0 <= start <= end", layers)
            stages.append(
                Stage(
                    device=_get(s, "name", sw, str),
                    start=layers[0],
                    end=layers[1],
                    embedding=bool(s.get("embedding", False)),
                    lm_head=bool(s.get("lm_head", False)),
                    memory_gb=float(s.get("memory_gb", 0.0) or 0.0),
                )
            )
        if not stages:
            raise InputError(f"{where}.devices", "a replica needs at least one device", [])
        concurrency = _get(r, "concurrency", where, int) if "concurrency" in r else 1
        if concurrency < 1:
            raise InputError(f"{where}.concurrency", "must be >= 1", concurrency)
        replicas.append(
            Replica(
                id=_get(r, "id", where, int) if "id" in r else i,
                role=role,
                stages=tuple(stages),
                concurrency=concurrency,
                prefill_tok_s=r.get("prefill_tok_s"),
                decode_tok_s_per_request=r.get("decode_tok_s_per_request"),
                bottleneck_device=str(r.get("bottleneck_device", "")),
            )
        )
    if not replicas:
        raise InputError(f"{source}: replicas", "a plan needs at least one replica", [])
    stats = d.get("planner") or {}
    return Plan(
        system=_get(d, "system", source, str),
        model=_get(d, "model", source, str),
        objective=_get(d, "objective", source, float) if d.get("objective") is not None else float("nan"),
        objective_kind=str(d.get("objective_kind", "bottleneck_s")),
        replicas=tuple(replicas),
        unused_devices=tuple(d.get("unused_devices") or ()),
        planner=PlannerStats(
            evaluations=int(stats.get("evaluations", 0)),
            seconds=float(stats.get("seconds", 0.0)),
            seed=stats.get("seed"),
            generations=int(stats.get("generations", 0)),
        ),
        scheduler=str(d.get("scheduler", "jsq")),
        cluster=d.get("cluster") or {},
        model_spec=d.get("model_spec") or {},
    )


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(str(p), "plan file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}:{e.lineno}", f"malformed JSON: {e.msg}") from None
    return plan_from_dict(data, str(p))

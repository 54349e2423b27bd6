"""Memory-true stages: what each stage was planned to hold, reserved up front, and checked against
its device's memory before serving.

The planner sizes a stage as weights + KV of `concurrency` sequences at the planned context +
the runtime overhead (`Stage.memory_gb`, from the cost model). A worker reserves exactly that KV
pool at start (no doubling growth while serving the planned load), and a stage whose measured
weights plus planned KV exceed its device's `memory_gb` fails at start with one line naming the
device, the need and the limit — on emulated devices too, instead of swapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.errors import InputError
from e2llm.plan.types import Replica, Stage
from e2llm.specs.model_spec import ModelSpec

GIB = 2**30  # memory_gb in plans and clusters counts GiB (`Device.memory_bytes`)


def predicted_weight_bytes(spec: ModelSpec, stage: Stage) -> float:
    """The cost model's weights of `stage` (layers, embedding, final norm + LM head)."""
    return spec.stage_weight_bytes(stage.n_layers, embedding=stage.embedding, lm_head=stage.lm_head)


def planned_kv_bytes(spec: ModelSpec | None, stage: Stage) -> float:
    """KV bytes the plan budgeted on `stage` (0 for a hand-written plan without memory figures)."""
    if spec is None or stage.memory_gb <= 0:
        return 0.0
    return max(0.0, stage.memory_gb * GIB - predicted_weight_bytes(spec, stage) - RUNTIME_OVERHEAD_BYTES)


def kv_reservation(spec: ModelSpec | None, replica: Replica, stage: Stage) -> tuple[int, int]:
    """(sequences, tokens each) of KV to reserve on `stage`: the replica's planned concurrency at
    the longest context its planned KV bytes cover, a sliding-window layer keeping at most its
    window (as the cost model counts it; (0, 0): reserve nothing)."""
    kv = planned_kv_bytes(spec, stage)
    if spec is None or kv <= 0:
        return 0, 0
    sequences = max(1, replica.concurrency)
    per_sequence = kv / sequences
    layers = range(stage.start, stage.end)
    window = spec.sliding_window
    full = sum(spec.kv_bytes_per_token(i) for i in layers if not spec.window(i))
    every = sum(spec.kv_bytes_per_token(i) for i in layers)
    if not every:
        return sequences, 0
    if full == every or per_sequence < every * window:  # no layer slides, or within the window
        return sequences, int(per_sequence // every)
    if not full:  # only sliding layers: the windows hold any context
        return sequences, spec.max_context
    return sequences, min(spec.max_context, int(window + (per_sequence - every * window) // full))


def check_fits(
    replica: Replica, infos: list[dict[str, Any]], spec: ModelSpec | None, memory_gb: Mapping[str, Any]
) -> None:
    """Refuse a stage whose measured weights + planned KV + overhead exceed its device memory."""
    for stage, info in zip(replica.stages, infos, strict=True):
        limit = memory_gb.get(stage.device)
        if not isinstance(limit, int | float) or limit <= 0:
            continue
        need = info["weight_bytes"] + planned_kv_bytes(spec, stage) + RUNTIME_OVERHEAD_BYTES
        if need > limit * GIB:
            raise InputError(
                f"device {stage.device}",
                f"stage layers [{stage.start}, {stage.end}) of replica {replica.id} needs "
                f"{need / GIB:.2f} GiB (weights {info['weight_bytes'] / GIB:.2f} GiB + planned KV + "
                f"{RUNTIME_OVERHEAD_BYTES / GIB:.2f} GiB overhead), memory_gb limit {limit:.2f} GiB",
            )

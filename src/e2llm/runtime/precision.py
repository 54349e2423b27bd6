"""One precision setting from plan to stage: the plan's weight / expert precision and KV bytes per
value decide how every stage holds its weights, which dtype its activations use and what its KV
cache holds — so the memory the planner budgeted is the memory the stage takes.

Refusals (a precision a device has no kernel for, a KV size without a dtype) are `InputError`s
raised before any actor starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.errors import InputError
from e2llm.runtime.checkpoint import FLOAT_PRECISIONS, PRECISIONS
from e2llm.specs.model_spec import ModelSpec

_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Weight precisions each torch device type has kernels for (int4: torch's `_weight_int4pack_mm*`
# exist for CPU and CUDA only; MXFP4 experts are dequantized on the fly, which works anywhere).
KERNELS: dict[str, tuple[str, ...]] = {
    "cpu": PRECISIONS,
    "cuda": PRECISIONS,
    "mps": ("fp32", "bf16", "fp16", "int8", "mxfp4"),
}


@dataclass(frozen=True, slots=True)
class StagePrecision:
    weights: str  # one of checkpoint.PRECISIONS
    experts: str
    activations: str  # torch dtype name
    kv: str  # torch dtype name


def stage_precision(spec: ModelSpec | None, fallback_dtype: str, device: str) -> StagePrecision:
    """The setting for a plan's model spec on torch device type `device`. A plan without one
    (hand-written) runs at `fallback_dtype` throughout, as before."""
    if spec is None:
        same = _from_torch(fallback_dtype)
        return StagePrecision(same, same, fallback_dtype, fallback_dtype)
    weights, experts = spec.weight_precision, spec.expert_precision if spec.is_moe else spec.weight_precision
    for field, value in (("weight_precision", weights), ("expert_precision", experts)):
        if value not in PRECISIONS:
            raise InputError("plan model_spec", f"{field} must be one of {', '.join(PRECISIONS)}", value)
        if value not in KERNELS.get(device, PRECISIONS):
            raise InputError(f"device {device}", f"has no kernels for {field}", value)
    # 4- and 8-bit weights multiply with bf16 activations (torch's int4 CPU kernel wants bf16);
    # fp16 on MPS, which lacks bf16 on older systems
    if weights in FLOAT_PRECISIONS:
        activations = _TORCH_NAMES[weights]
    else:
        activations = "float16" if device == "mps" else "bfloat16"
    if spec.kv_bytes_per_value == 4:
        kv = "float32"
    elif spec.kv_bytes_per_value == 2:
        kv = activations if activations != "float32" else "bfloat16"
    else:
        raise InputError(
            "plan model_spec", "kv_bytes_per_value must be 2 or 4 (16- or 32-bit KV)", spec.kv_bytes_per_value
        )
    return StagePrecision(weights, experts, activations, kv)


def _from_torch(dtype: str) -> str:
    return next((p for p, name in _TORCH_NAMES.items() if name == dtype), "fp32")

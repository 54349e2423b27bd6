"""llama.cpp efficiencies per vendor class of edge device, and which class a device belongs to.

Fitted by `benchmarks/calibrate_edge.py --fit` to the published llama.cpp speeds in
cost/edge_evidence.py (table and URLs in benchmarks/RESULTS.md, "Edge calibration"): `compute`
and `memory` per class, the call overheads shared by all classes (30 µs per layer or head call,
20 µs per expert a prompt micro-batch touches, 512-token prompt micro-batches). In-sample median
|error|: Metal 5%, CUDA 2%, Jetson 11% (17 points, 9 parameters; per-point errors in RESULTS.md).

- Metal (Apple GPUs; `tflops` = ALU peak): 70% of it in prompt matmuls, 75% of bandwidth.
- CUDA GeForce (`tflops` = dense FP16 tensor peak with FP32 accumulate): 63% / 83%.
- Jetson AGX Orin: 43% of bandwidth from three generation rates (Llama-2-7B, an 8B, a MoE).
  Its compute fraction, 9% of the tensor peak, rests on ONE published number: llama.cpp's
  20k-token prompt rate of Qwen3.5-35B-A3B (a MoE with linear attention) on an AGX Orin 64GB,
  523 tok/s. It is the least certain factor here: no dense-model or GPT-OSS prompt rate on an
  Orin was found, and Qwen3.5's DeltaNet layers may be slower in llama.cpp than GPT-OSS's
  attention. A measured profile of the device (`e2llm profile`) should replace it.
"""

from __future__ import annotations

from dataclasses import replace

from e2llm.cost.roofline import LLAMA_CPP, Efficiency
from e2llm.specs.device import Device

_SHARED = replace(LLAMA_CPP, layer_call_s=30e-6, head_call_s=30e-6, prefill_expert_call_s=20e-6)

LLAMA_CPP_METAL = replace(_SHARED, compute=0.70, memory=0.75)
LLAMA_CPP_CUDA = replace(_SHARED, compute=0.63, memory=0.83)
LLAMA_CPP_JETSON = replace(_SHARED, compute=0.09, memory=0.43)

EDGE_BY_VENDOR: dict[str, Efficiency] = {
    "metal": LLAMA_CPP_METAL,
    "cuda": LLAMA_CPP_CUDA,
    "jetson": LLAMA_CPP_JETSON,
}

# Preset-name prefixes of each class (specs/presets.py). Other devices (CPUs, AMD iGPUs, devices
# without a preset) get the pooled `LLAMA_CPP`.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("apple-", "metal"),
    ("jetson-", "jetson"),
    ("rtx-", "cuda"),
    ("l4", "cuda"),
    ("a100", "cuda"),
    ("h200", "cuda"),
)


def vendor_class(device: Device) -> str | None:
    """'metal', 'cuda' or 'jetson' from the device's preset name; None when unknown."""
    preset = device.preset or ""
    for prefix, vendor in _PREFIXES:
        if preset.startswith(prefix):
            return vendor
    return None


def edge_efficiency(device: Device) -> Efficiency:
    """The llama.cpp efficiency of `device`'s vendor class, or the pooled `LLAMA_CPP`."""
    vendor = vendor_class(device)
    return EDGE_BY_VENDOR[vendor] if vendor else LLAMA_CPP

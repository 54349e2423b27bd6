"""Built-in catalog of real edge/fog devices, so a cluster file can say `preset: jetson-agx-orin-32gb`.

Field meanings (the same as `Device`):
- `memory_gb`: accelerator or unified memory an inference engine can use for weights + KV, GiB.
  Discrete GPUs: the whole VRAM (the cost model subtracts its own runtime overhead). Unified-memory
  machines (Apple, Jetson, iGPU mini-PCs, Raspberry Pi): what is left after the OS, following the
  method's testbed (Apple M1 16 GB -> 12, M2 Max 32 GB -> 22, AGX Orin 32 GB -> 25).
- `tflops`: peak dense FP16 TFLOP/s of the units an LLM engine's matrix multiplies run on:
  * NVIDIA GPUs: tensor cores, dense (no 2:4 sparsity). GeForce cards run FP16 with FP32
    accumulation (what PyTorch/cuBLAS use) at half their FP16-accumulate rate; we take the
    FP32-accumulate figure, which is 2x the FP32 shader figure on Ampere/Ada/Blackwell GeForce.
    Jetson Orin and data-centre GPUs have full-rate FP32 accumulation.
  * Apple GPUs: the shader ALUs (no matrix units; FP16 runs at the FP32 rate).
  * CPUs: the FP32 SIMD FMA peak (llama.cpp's CPU path accumulates in FP32).
  The roofline's efficiency factors (cost/) turn these peaks into sustained rates.
- `mem_bandwidth_gbs`: peak DRAM/VRAM bandwidth, GB/s (1e9 bytes/s).
- `host_memory_gb`: system RAM of a typical configuration (for offload); the same pool as
  `memory_gb` on unified-memory machines. Cluster files override it per device.
- `source`: where the numbers come from, and how `tflops` was derived.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from e2llm.errors import InputError


@dataclass(frozen=True, slots=True)
class Preset:
    """Public specs of one device model; see the module docstring for the units."""

    memory_gb: float
    tflops: float
    mem_bandwidth_gbs: float
    host_memory_gb: float
    source: str


PRESETS: dict[str, Preset] = {
    "jetson-orin-nano-8gb": Preset(
        memory_gb=6.0,
        tflops=10.2,
        mem_bandwidth_gbs=68.0,
        host_memory_gb=8.0,
        source="NVIDIA Jetson Orin Nano 8GB module data sheet (original 15 W mode): 8 GB LPDDR5 "
        "128-bit 68 GB/s, 1024-core Ampere GPU (8 SMs, 32 tensor cores) at 625 MHz, 40 sparse "
        "INT8 TOPS -> 10.2 dense FP16 tensor TFLOPS (FP32 CUDA 1.28); ~2 GB kept for the OS",
    ),
    "jetson-agx-orin-32gb": Preset(
        memory_gb=25.0,
        tflops=26.7,
        mem_bandwidth_gbs=204.8,
        host_memory_gb=32.0,
        source="NVIDIA Jetson AGX Orin series data sheet: 32 GB LPDDR5 256-bit 204.8 GB/s, "
        "1792-core Ampere GPU (14 SMs, 56 tensor cores) at 930 MHz -> 26.7 dense FP16 tensor "
        "TFLOPS (FP32 CUDA 3.3); 25 GB usable as in the E2LLM testbed",
    ),
    "jetson-agx-orin-64gb": Preset(
        memory_gb=57.0,
        tflops=42.6,
        mem_bandwidth_gbs=204.8,
        host_memory_gb=64.0,
        source="NVIDIA Jetson AGX Orin series data sheet: 64 GB LPDDR5 256-bit 204.8 GB/s, "
        "2048-core Ampere GPU (16 SMs, 64 tensor cores) at 1.3 GHz, 170 sparse INT8 GPU TOPS -> "
        "42.6 dense FP16 tensor TFLOPS (FP32 CUDA 5.3); OS margin as the 32GB module (7 GB)",
    ),
    "raspberry-pi-5-8gb": Preset(
        memory_gb=6.0,
        tflops=0.154,
        mem_bandwidth_gbs=17.1,
        host_memory_gb=8.0,
        source="Raspberry Pi 5 product brief: BCM2712, 4x Cortex-A76 at 2.4 GHz (2x128-bit NEON "
        "FMA = 16 FP32 FLOP/cycle/core -> 0.154 TFLOPS FP32), 8 GB LPDDR4X-4267 32-bit = "
        "17.1 GB/s; CPU inference only; ~2 GB kept for the OS",
    ),
    "apple-m1": Preset(
        memory_gb=12.0,
        tflops=2.6,
        mem_bandwidth_gbs=68.25,
        host_memory_gb=16.0,
        source="Apple M1 (8-core GPU, 1024 ALUs at 1.278 GHz): 2.6 TFLOPS FP32 = FP16 rate; "
        "16 GB LPDDR4X-4266 128-bit = 68.25 GB/s; 12 GB usable as in the E2LLM testbed",
    ),
    "apple-m2-max": Preset(
        memory_gb=22.0,
        tflops=10.7,
        mem_bandwidth_gbs=400.0,
        host_memory_gb=32.0,
        source="Apple M2 Max (30-core GPU, the one sold with 32 GB; the 38-core part is 13.6): "
        "10.7 TFLOPS FP32 = FP16 rate; LPDDR5-6400 512-bit = 400 GB/s; 22 GB of 32 usable as in "
        "the E2LLM testbed",
    ),
    "apple-m4": Preset(
        memory_gb=12.0,
        tflops=4.26,
        mem_bandwidth_gbs=120.0,
        host_memory_gb=16.0,
        source="Apple M4 (10-core GPU, 1280 ALUs at ~1.6 GHz): ~4.26 TFLOPS FP32 = FP16 rate; "
        "16 GB LPDDR5X-7500 128-bit = 120 GB/s; 12 GB of 16 usable (same margin as M1)",
    ),
    "rtx-3060-laptop": Preset(
        memory_gb=6.0,
        tflops=26.2,
        mem_bandwidth_gbs=336.0,
        host_memory_gb=16.0,
        source="NVIDIA GeForce RTX 3060 Laptop GPU: GA106, 3840 CUDA cores (30 SMs), boost up to "
        "1.703 GHz (TGP-dependent) -> 13.1 TFLOPS FP32 shader, 26.2 dense FP16 tensor (FP32 "
        "accumulate); 6 GB GDDR6 192-bit 14 Gbps = 336 GB/s",
    ),
    "rtx-4060-laptop": Preset(
        memory_gb=8.0,
        tflops=29.1,
        mem_bandwidth_gbs=256.0,
        host_memory_gb=16.0,
        source="NVIDIA GeForce RTX 4060 Laptop GPU: AD107, 3072 CUDA cores, boost up to 2.37 GHz "
        "-> 14.6 TFLOPS FP32 shader; 233 AI TOPS (FP8 sparse) -> 29.1 dense FP16 tensor (FP32 "
        "accumulate); 8 GB GDDR6 128-bit 16 Gbps = 256 GB/s",
    ),
    "rtx-4090": Preset(
        memory_gb=24.0,
        tflops=165.2,
        mem_bandwidth_gbs=1008.0,
        host_memory_gb=64.0,
        source="NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: 165.2 dense FP16 "
        "tensor TFLOPS with FP32 accumulate (82.6 FP32 shader); 24 GB GDDR6X 384-bit 21 Gbps = "
        "1008 GB/s",
    ),
    "rtx-5070": Preset(
        memory_gb=12.0,
        tflops=61.7,
        mem_bandwidth_gbs=672.0,
        host_memory_gb=64.0,
        source="NVIDIA GeForce RTX 5070: GB205, 6144 CUDA cores at 2.51 GHz boost -> 30.9 TFLOPS "
        "FP32 shader; 988 AI TOPS (FP4 sparse) -> 61.7 dense FP16 tensor (FP32 accumulate); "
        "12 GB GDDR7 192-bit 28 Gbps = 672 GB/s",
    ),
    "mini-pc-x86": Preset(
        memory_gb=16.0,
        tflops=8.3,
        mem_bandwidth_gbs=89.6,
        host_memory_gb=32.0,
        source="Mini-PC with AMD Ryzen 7 7840HS (e.g. Beelink SER7): Radeon 780M iGPU, 12 RDNA3 "
        "CUs (768 ALUs) at 2.7 GHz -> 8.3 TFLOPS FP32 with dual issue (AMD's figure; = packed "
        "FP16 rate without WMMA); 32 GB DDR5-5600 dual channel = 89.6 GB/s; 16 GB assignable to "
        "the iGPU (UMA/GTT)",
    ),
    "mini-pc-n100": Preset(
        memory_gb=12.0,
        tflops=0.218,
        mem_bandwidth_gbs=38.4,
        host_memory_gb=16.0,
        source="Mini-PC with Intel N100: 4 Gracemont cores at 3.4 GHz, 2x128-bit FMA = 16 FP32 "
        "FLOP/cycle/core -> 0.218 TFLOPS FP32 (CPU inference); 16 GB DDR5-4800 single channel = "
        "38.4 GB/s; ~4 GB kept for the OS",
    ),
    "a100-40gb": Preset(
        memory_gb=40.0,
        tflops=312.0,
        mem_bandwidth_gbs=1555.0,
        host_memory_gb=256.0,
        source="NVIDIA A100 Tensor Core GPU data sheet (40GB SXM/PCIe): 312 dense FP16/BF16 "
        "tensor TFLOPS, 40 GB HBM2 1555 GB/s; fog server",
    ),
    "l4": Preset(
        memory_gb=24.0,
        tflops=121.0,
        mem_bandwidth_gbs=300.0,
        host_memory_gb=128.0,
        source="NVIDIA L4 data sheet: 242 FP16 tensor TFLOPS with sparsity -> 121 dense; 24 GB "
        "GDDR6 300 GB/s; 72 W fog/edge server card",
    ),
    "h200": Preset(
        memory_gb=140.0,
        tflops=989.0,
        mem_bandwidth_gbs=4800.0,
        host_memory_gb=512.0,
        source="NVIDIA H200 SXM data sheet: 989 dense BF16/FP16 tensor TFLOPS (1979 with "
        "sparsity), 141 GB HBM3e (~140 GiB) at 4.8 TB/s; fog/cloud server class",
    ),
}


def get_preset(name: str, where: str = "") -> Preset:
    """The preset called `name`; an unknown name is an `InputError` listing close matches."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), PRESETS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(PRESETS)}"
        raise InputError(where, "unknown device preset" + hint, name) from None

"""Published llama.cpp speeds on edge-class hardware: the evidence the edge efficiencies are fit to.

Each `EvidencePoint` is one number somebody published (URL in `source`): a prompt-processing
rate (`pp`: prompt tokens / prefill time, logits for the last position only, as llama-bench) or a
generation rate (`tg`: one token per decode step, batch 1) for one model on one device. Only
numbers actually found are listed (searched 2026-11-25; benchmarks/RESULTS.md "Edge
calibration" has the table and what was not found). `predicted_tok_s` turns a point into the
roofline's rate for a given `Efficiency`, so the factors can be fitted and checked
(benchmarks/calibrate_edge.py, tests/cost/test_edge_calibration.py).

Approximations, stated once:
- Q4_K_M files (~4.85 bits/weight) are modelled as `q4` (4.5): bytes are ~7% low for them.
- Devices not in the preset catalog are given their public peak here (same conventions as
  specs/presets.py: Apple = shader ALU FP32 rate, NVIDIA = dense FP16 tensor with FP32
  accumulate on GeForce); where a core count is unknown the note says which was assumed.
- Qwen3.5-35B-A3B (the only Jetson prompt-processing number found) has Gated DeltaNet linear
  attention in 3 of 4 layers; it is modelled as a 128-key sliding window on those layers (a
  fixed per-token state, like a window), with the shared expert counted as a ninth routed one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from e2llm.cost.roofline import Efficiency, RooflineTimes
from e2llm.specs.device import Device
from e2llm.specs.model_catalog import CATALOG, with_precision
from e2llm.specs.model_spec import ModelSpec
from e2llm.specs.presets import PRESETS

Vendor = Literal["metal", "cuda", "jetson"]


@dataclass(frozen=True, slots=True)
class EvidencePoint:
    label: str
    vendor: Vendor
    device: Device
    model: ModelSpec
    test: Literal["pp", "tg"]
    tokens: int  # pp: prompt length; tg: context the generation runs at (mean over the run)
    measured_tok_s: float
    source: str
    ubatch: int = 512  # llama.cpp's prompt micro-batch in that run (default 512)
    note: str = ""


def _preset(name: str) -> Device:
    p = PRESETS[name]
    return Device(name=name, memory_gb=p.memory_gb, tflops=p.tflops, mem_bandwidth_gbs=p.mem_bandwidth_gbs)


def _device(name: str, tflops: float, gbs: float) -> Device:
    return Device(name=name, memory_gb=64.0, tflops=tflops, mem_bandwidth_gbs=gbs)


M1_MAX = _device("apple-m1-max-32c", 10.4, 400.0)  # 32-core GPU assumed (24-core: 7.8 TFLOPS)
M1_PRO = _device("apple-m1-pro-16c", 5.3, 200.0)  # 16-core GPU assumed (14-core: 4.6 TFLOPS)
M4 = _preset("apple-m4")
RTX_3090 = _device("rtx-3090", 71.0, 936.0)  # 35.6 FP32 shader; FP16 tensor, FP32 accumulate
RTX_4090 = _preset("rtx-4090")
RTX_4060_LAPTOP = _preset("rtx-4060-laptop")
RTX_PRO_6000 = _device("rtx-pro-6000-blackwell", 503.8, 1792.0)  # GB202, 1.79 TB/s GDDR7
ORIN_64 = _preset("jetson-agx-orin-64gb")

LLAMA2_7B = ModelSpec(
    name="llama-2-7b", n_layers=32, hidden=4096, n_heads=32, n_kv_heads=32, head_dim=128,
    intermediate=11008, vocab=32000, weight_precision="q4", expert_precision="q4",
)  # fmt: skip
LLAMA31_8B_Q4 = with_precision(CATALOG["llama-3.1-8b"], "q4")
GPT_OSS_20B = CATALOG["gpt-oss-20b"]  # MXFP4 experts, 16-bit attention/embeddings (ggml-org GGUF)
QWEN35_35B_A3B = ModelSpec(
    name="qwen3.5-35b-a3b~", n_layers=40, hidden=2048, n_heads=16, n_kv_heads=2, head_dim=256,
    intermediate=512, vocab=248320, n_experts=256, experts_per_token=9, sliding_window=128,
    sliding_layers=tuple(i for i in range(40) if i % 4 != 3),
    weight_precision="q4", expert_precision="q4",
)  # fmt: skip

_NORMIE_M1MAX = "https://github.com/brand-o/normiebench/issues/40"
_NORMIE_M4 = "https://github.com/brand-o/normiebench/issues/3"
_MLX858 = "https://github.com/ml-explore/mlx-lm/issues/858"
_PR4766 = "https://github.com/ggml-org/llama.cpp/pull/4766"
_PR15631 = "https://github.com/ggml-org/llama.cpp/pull/15631"
_PR16991 = "https://github.com/ggml-org/llama.cpp/pull/16991"
_LLMFIT958 = "https://github.com/AlexsJones/llmfit/pull/958"
_HOLOHUB170 = "https://github.com/nvidia-holoscan/holohub/issues/170"
_MINICPM331 = "https://github.com/OpenBMB/MiniCPM/issues/331"
_VLLM_ORIN = "https://huggingface.co/thehighnotes/vllm-jetson-orin"

POINTS: tuple[EvidencePoint, ...] = (
    EvidencePoint("M1 Max, Llama-3.1-8B Q4_K_M, pp512", "metal", M1_MAX, LLAMA31_8B_Q4, "pp", 512,
                  499.58, _NORMIE_M1MAX),
    EvidencePoint("M1 Max, Llama-3.1-8B Q4_K_M, tg128", "metal", M1_MAX, LLAMA31_8B_Q4, "tg", 64,
                  46.2, _NORMIE_M1MAX),
    EvidencePoint("M4, Llama-3.1-8B Q4_K_M, pp512", "metal", M4, LLAMA31_8B_Q4, "pp", 512,
                  224.81, _NORMIE_M4),
    EvidencePoint("M4, Llama-3.1-8B Q4_K_M, tg128", "metal", M4, LLAMA31_8B_Q4, "tg", 64,
                  20.87, _NORMIE_M4),
    EvidencePoint("M1 Pro, gpt-oss-20b MXFP4, prompt 14,745 tok", "metal", M1_PRO, GPT_OSS_20B, "pp",
                  14745, 404.6, _MLX858, note="llama-completion, 3 runs 404.4-404.6"),
    EvidencePoint("M1 Pro, gpt-oss-20b MXFP4, generation after 14.7k", "metal", M1_PRO, GPT_OSS_20B,
                  "tg", 14900, 37.05, _MLX858),
    EvidencePoint("RTX 3090, LLaMA-7B Q4_0, pp512", "cuda", RTX_3090, LLAMA2_7B, "pp", 512, 3408.18,
                  _PR4766, note="master column, Jan 2024"),
    EvidencePoint("RTX 3090, LLaMA-7B Q4_0, tg128", "cuda", RTX_3090, LLAMA2_7B, "tg", 64, 121.82,
                  _PR4766),
    EvidencePoint("RTX 4090, LLaMA-7B Q4_0, pp512", "cuda", RTX_4090, LLAMA2_7B, "pp", 512, 7979.85,
                  _PR4766),
    EvidencePoint("RTX 4090, gpt-oss-20b MXFP4, pp4096 (ubatch 1024)", "cuda", RTX_4090, GPT_OSS_20B,
                  "pp", 4096, 11078.32, _PR15631, ubatch=1024),
    EvidencePoint("RTX PRO 6000 Blackwell, gpt-oss-20b MXFP4, pp128", "cuda", RTX_PRO_6000,
                  GPT_OSS_20B, "pp", 128, 5127.80, _PR16991, ubatch=2048,
                  note="workstation card: MoE call overhead evidence"),
    EvidencePoint("RTX PRO 6000 Blackwell, gpt-oss-20b MXFP4, tg128", "cuda", RTX_PRO_6000,
                  GPT_OSS_20B, "tg", 64, 391.20, _PR16991),
    EvidencePoint("RTX 4060 Laptop, Llama-3.1-8B Q4_K_M (ollama), generation", "cuda",
                  RTX_4060_LAPTOP, LLAMA31_8B_Q4, "tg", 300, 47.2, _LLMFIT958,
                  note="ollama (ggml backend), default quant; context assumed ~300"),
    EvidencePoint("AGX Orin (IGX), Llama-2-7B 4-bit, generation", "jetson", ORIN_64, LLAMA2_7B, "tg",
                  64, 22.5, _HOLOHUB170, note="IGX Orin iGPU = AGX Orin 64GB per the author"),
    EvidencePoint("AGX Orin, MiniCPM4.1-8B Q4_K_M, generation", "jetson", ORIN_64, LLAMA31_8B_Q4,
                  "tg", 300, 25.0, _MINICPM331,
                  note="'~25 t/s', 8B modelled as Llama-3.1-8B; 32/64GB module not stated"),
    EvidencePoint("AGX Orin 64GB, Qwen3.5-35B-A3B Q4_K_M, prompt ~20k tok", "jetson", ORIN_64,
                  QWEN35_35B_A3B, "pp", 20000, 523.0, _VLLM_ORIN,
                  note="approximate shape (see module doc)"),
    EvidencePoint("AGX Orin 64GB, Qwen3.5-35B-A3B Q4_K_M, generation ~4k ctx", "jetson", ORIN_64,
                  QWEN35_35B_A3B, "tg", 4000, 22.5, _VLLM_ORIN),
)  # fmt: skip


def predicted_tok_s(point: EvidencePoint, eff: Efficiency) -> float:
    """The roofline's rate for `point` with `eff` (the point's own micro-batch size): the whole
    model on one device, embedding + layers + the LM head on the last position (pp) or on the
    one new token (tg)."""
    t = RooflineTimes(point.device, point.model, replace(eff, prefill_ubatch=point.ubatch))
    n = point.model.n_layers
    if point.test == "pp":
        s = n * t.layer_prefill_s(point.tokens) + t.embed_s(point.tokens) + t.head_s(1)
        return point.tokens / s
    return 1.0 / (n * t.layer_decode_s(1, point.tokens) + t.embed_s(1) + t.head_s(1))

"""Model shapes and devices shared by the cost tests (built directly, independent of catalogs)."""

from __future__ import annotations

from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_spec import ModelSpec

LLAMA_8B = ModelSpec(
    name="llama-3.1-8b",
    n_layers=32,
    hidden=4096,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    intermediate=14336,
    vocab=128256,
)

GPT_OSS_20B = ModelSpec(
    name="gpt-oss-20b",
    n_layers=24,
    hidden=2880,
    n_heads=64,
    n_kv_heads=8,
    head_dim=64,
    intermediate=2880,
    vocab=201088,
    n_experts=32,
    experts_per_token=4,
    sliding_window=128,
    sliding_layers=tuple(range(0, 24, 2)),
    expert_precision="mxfp4",
)

SMOLLM_135M = ModelSpec(
    name="smollm2-135m",
    n_layers=30,
    hidden=576,
    n_heads=9,
    n_kv_heads=3,
    head_dim=64,
    intermediate=1536,
    vocab=49152,
    tied_embeddings=True,
)

RTX_5070 = Device(name="dev1", memory_gb=12, tflops=61.7, mem_bandwidth_gbs=672)
M1 = Device(name="dev2", memory_gb=12, tflops=2.6, mem_bandwidth_gbs=68.25)


def cluster(*devices: Device, mbps: float = 920.0, latency_ms: float = 0.3) -> Cluster:
    return Cluster(devices=tuple(devices), default_link=Link(bandwidth_mbps=mbps, latency_ms=latency_ms))

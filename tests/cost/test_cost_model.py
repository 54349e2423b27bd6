"""CostModel: KV and weight bytes, transfers, stage times and memory."""

from __future__ import annotations

import sys

import pytest
from costkit import GPT_OSS_20B, LLAMA_8B, M1, RTX_5070, cluster

from e2llm.cost.build import build_cost_model
from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.specs.device import Link


def test_kv_bytes_gqa_llama_8b() -> None:
    cm = build_cost_model(LLAMA_8B, cluster(RTX_5070))
    # 32 layers x (K, V) x 8 KV heads x 128 dims x 2 bytes = 128 KiB per token (not 32 heads)
    assert cm.kv_bytes(0, 32, 1) == 128 * 1024
    assert cm.kv_bytes(0, 32, 1000) == 1000 * 128 * 1024
    assert cm.kv_bytes(0, 16, 1000) == 500 * 128 * 1024


def test_kv_bytes_sliding_window_layers_are_capped() -> None:
    cm = build_cost_model(GPT_OSS_20B, cluster(RTX_5070))
    per_token = 2 * 8 * 64 * 2
    # 12 full layers hold 4096 tokens, 12 sliding layers hold 128
    assert cm.kv_bytes(0, 24, 4096) == per_token * (12 * 4096 + 12 * 128)


def test_transfer_and_hop_times() -> None:
    c = cluster(RTX_5070, M1, mbps=800.0, latency_ms=2.0)
    cm = build_cost_model(LLAMA_8B, c)
    # 1e6 bytes over 800 Mbit/s = 10 ms, plus 2 ms latency
    assert cm.transfer_s("dev1", "dev2", 1e6) == pytest.approx(0.012)
    assert cm.transfer_s("dev1", "dev1", 1e6) == 0.0
    assert cm.hop_s("dev1", "dev2", 10) == pytest.approx(0.002 + 10 * 4096 * 2 * 8 / 800e6)


def test_per_pair_link_override() -> None:
    c = cluster(RTX_5070, M1)
    slow = type(c)(
        devices=c.devices, default_link=c.default_link, links={frozenset(("dev1", "dev2")): Link(100, 5)}
    )
    cm = build_cost_model(LLAMA_8B, slow)
    assert cm.transfer_s("dev2", "dev1", 1.25e6) == pytest.approx(0.005 + 0.1)


def test_stage_times_add_embedding_and_head() -> None:
    cm = build_cost_model(LLAMA_8B, cluster(RTX_5070))
    t = cm.times["dev1"]
    bare = cm.stage_prefill_s("dev1", 4, 512)
    assert bare == pytest.approx(4 * t.layer_prefill_s(512))
    full = cm.stage_prefill_s("dev1", 4, 512, embedding=True, lm_head=True)
    assert full == pytest.approx(bare + t.embed_s(512) + t.head_s(1))
    dec = cm.stage_decode_s("dev1", 4, 8, 1024, lm_head=True)
    assert dec == pytest.approx(4 * t.layer_decode_s(8, 1024) + t.head_s(8))
    assert cm.stage_prefill_s("dev1", 0, 512) == 0.0


def test_stage_memory_and_max_sequences() -> None:
    cm = build_cost_model(LLAMA_8B, cluster(RTX_5070))
    mem = cm.stage_memory_bytes(0, 8, embedding=True, sequences=3, context=1000)
    weights = 8 * LLAMA_8B.layer_weight_bytes + LLAMA_8B.embedding_bytes
    assert mem == pytest.approx(weights + 3 * 1000 * 8 * 4096 + RUNTIME_OVERHEAD_BYTES)
    n = cm.max_sequences("dev1", 0, 8, 1000, embedding=True)
    free = RTX_5070.memory_bytes - weights - RUNTIME_OVERHEAD_BYTES
    assert n == int(free // (1000 * 8 * 4096))
    assert cm.stage_memory_bytes(0, 8, embedding=True, sequences=n, context=1000) <= RTX_5070.memory_bytes
    assert cm.stage_memory_bytes(0, 8, embedding=True, sequences=n + 1, context=1000) > RTX_5070.memory_bytes
    assert cm.max_sequences("dev1", 0, 32, 1000) == 0  # 16 GB of bf16 weights > 12 GiB
    assert cm.max_sequences("dev1", 0, 0, 1000, lm_head=True) == sys.maxsize


def test_moe_weights_count_all_experts() -> None:
    cm = build_cost_model(GPT_OSS_20B, cluster(RTX_5070))
    # MXFP4 experts: 32 x 3 x 2880^2 x 0.53125 B; all resident although 4 are active
    experts = 32 * 3 * 2880 * 2880 * 0.53125
    assert cm.weight_bytes(0, 1) == pytest.approx(GPT_OSS_20B.layer_weight_bytes)
    assert GPT_OSS_20B.layer_weight_bytes > experts


@pytest.mark.parametrize("model", [LLAMA_8B, GPT_OSS_20B])
def test_kv_bytes_equals_per_layer_sum(model) -> None:
    cm = build_cost_model(model, cluster(RTX_5070))
    n = model.n_layers
    for start, end, context in [
        (0, n, 4096),
        (3, n - 2, 100),
        (5, 6, 200),
        (1, 2, 128),
        (2, 2, 50),
        (0, n, 0),
    ]:
        brute = sum(model.kv_bytes_per_token(i) * model.kv_tokens(i, context) for i in range(start, end))
        assert cm.kv_bytes(start, end, context) == pytest.approx(brute)

"""A planned `e2llm serve` decodes many streams together, and exactly.

The planner's plan for four emulated devices, each large enough for SmolLM2-135M at fp32, with
the method's roles (`--mixed off`: the test is about decoders fed by PREFILL replicas): PREFILL
replicas and a decoder. A PREFILL replica's hold on a prompt ends once its KV is handed off,
so a decoder fills its batch up to its planned concurrency; before, a hold lasted until the
request had finished decoding and at most 4 sequences ever decoded together. Every stream must
still be exactly its served-alone greedy text. That holds at fp32, where a row's result does not
depend on the batch beside it; at the model's published Q4_1 the activations are bf16, whose
logits tie exactly now and then (a gap of 0.0 between the top two is common), and attention over
keys padded to the batch's longest row rounds differently, which flips such a tie.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from test_device_loss import PROMPTS, _body, _stream

from e2llm.bench.local_server import local_server
from e2llm.bench.server_metrics import metric_sum

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 12
# fp32 fits one device of 2 GiB; 20 GB/s keeps a decoder above the 15 tok/s floor at fp32
CLUSTER = """devices:
  - {name: cpu0, memory_gb: 2.0, host_memory_gb: 2, tflops: 0.1, mem_bandwidth_gbs: 20}
  - {name: cpu1, memory_gb: 2.0, host_memory_gb: 2, tflops: 0.1, mem_bandwidth_gbs: 20}
  - {name: cpu2, memory_gb: 2.0, host_memory_gb: 2, tflops: 0.1, mem_bandwidth_gbs: 20}
  - {name: cpu3, memory_gb: 2.0, host_memory_gb: 2, tflops: 0.1, mem_bandwidth_gbs: 20}
network: {bandwidth_mbps: 10000, latency_ms: 0.1}
"""
OLD_LIMIT = 4  # sequences decoded together before the fix


async def _streams(url: str) -> tuple[dict[str, str], list[tuple[str, str]], float]:
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        reference = {}
        for p in PROMPTS:  # one at a time, nothing else running
            r = await client.post("/v1/completions", json=_body(p, False))
            reference[p] = r.json()["choices"][0]["text"]
        started: asyncio.Queue[None] = asyncio.Queue()
        jobs = [_stream(client, PROMPTS[i % len(PROMPTS)], started) for i in range(STREAMS)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), 300)
        metrics = (await client.get("/metrics")).text
    peaks = [metric_sum(metrics, "e2llm_decode_batch_peak", replica=str(r)) for r in range(4)]
    assert any(p is not None for p in peaks), metrics
    return reference, list(results), max(p for p in peaks if p is not None)


def test_planned_serve_decodes_more_than_four_streams_together_exactly(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    with local_server(
        [str(cluster), "--precision", "fp32", "--mixed", "off"], tmp_path / "serve.log", cwd=ROOT
    ) as server:
        reference, results, peak = asyncio.run(_streams(server.url))
    for i, (text, outcome) in enumerate(results):
        assert outcome == "length" and text == reference[PROMPTS[i % len(PROMPTS)]], (i, text, outcome)
    print(f"decode batch peak: {peak:.0f} of {STREAMS} streams")
    assert peak > OLD_LIMIT

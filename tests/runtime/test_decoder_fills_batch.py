"""The default `e2llm serve` decodes many streams together, and exactly.

No arguments: the planner's plan for `examples/clusters/local-cpu.yaml`, one PREFILL and one
DECODER replica of two devices each. A PREFILL replica's hold on a prompt ends once its KV is
handed off, so the decoder fills its batch up to its planned concurrency; before, a hold lasted
until the request had finished decoding and at most 4 sequences ever decoded together. Every
stream must still be exactly its served-alone greedy text.
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
    peak = metric_sum(metrics, "e2llm_decode_batch_peak", replica="1")
    assert peak is not None, metrics
    return reference, list(results), peak


def test_default_serve_decodes_more_than_four_streams_together_exactly(tmp_path: Path) -> None:
    with local_server([], tmp_path / "serve.log", cwd=ROOT) as server:
        reference, results, peak = asyncio.run(_streams(server.url))
    for i, (text, outcome) in enumerate(results):
        assert outcome == "length" and text == reference[PROMPTS[i % len(PROMPTS)]], (i, text, outcome)
    print(f"decode batch peak: {peak:.0f} of {STREAMS} streams")
    assert peak > OLD_LIMIT

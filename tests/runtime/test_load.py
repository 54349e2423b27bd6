"""200 concurrent streaming clients against a live `e2llm serve` on loopback.

Every stream must arrive whole: each of a handful of distinct prompts is served once alone
(greedy) as the reference, then 200 clients stream them all at once; every stream's text and token
count must equal its prompt's reference (a lost, duplicated or missing token changes one or the
other). Bounded: 200 requests of 8 tokens, each client with a timeout, the whole run under a
wall-time limit. The API key comes from `E2LLM_API_KEY` here (the other server test uses the flag).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2llm.bench.local_server import serving_plan

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
KEY = "env-key-456"
CLIENTS = 200
TOKENS = 8
RUN_LIMIT_S = 300.0  # every client's timeout too: a stream may wait long for its prefill
PROMPTS = ["The capital of France is", "One, two, three,", "def fib(n):", "Water boils at", "Dear Sir,"]
PLAN = {
    "system": "test",
    "model": MODEL,
    "objective": 0.0,
    "replicas": [
        {"id": 0, "role": "PREFILL", "devices": [{"name": "cpu0", "layers": [0, 30]}]},
        {
            "id": 1,
            "role": "DECODER",
            "concurrency": 64,
            "devices": [{"name": "cpu1", "layers": [0, 15]}, {"name": "cpu2", "layers": [15, 30]}],
        },
    ],
}


async def _stream(client: httpx.AsyncClient, prompt: str) -> tuple[str, int, str | None]:
    """One streaming completion: (text, completion tokens from usage, finish reason)."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text, used, finish, done = "", -1, None, False
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk: dict[str, Any] = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                text += choice["text"]
                finish = choice["finish_reason"] or finish
    assert done, "stream ended without [DONE]"
    return text, used, finish


async def _run(url: str) -> tuple[dict[str, tuple[str, int, str | None]], list[Any], float]:
    headers = {"authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS + 10)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=RUN_LIMIT_S, limits=limits) as client:
        reference = {p: await _stream(client, p) for p in PROMPTS}  # one at a time
        t0 = time.monotonic()
        jobs = [_stream(client, PROMPTS[i % len(PROMPTS)]) for i in range(CLIENTS)]
        results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), RUN_LIMIT_S)
        return reference, results, time.monotonic() - t0


def test_200_concurrent_streams_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    with serving_plan(PLAN, tmp_path, env={"E2LLM_API_KEY": KEY}) as (url, _, log):
        denied = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=10)
        assert denied.status_code == 401  # the key from the environment is enforced
        reference, results, wall_s = asyncio.run(_run(url))
        health = httpx.get(f"{url}/health", timeout=10).json()
    assert "(API key required)" in log.read_text()
    for prompt, (text, used, finish) in reference.items():
        assert used == TOKENS and finish == "length" and text, (prompt, text, used, finish)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    mismatched = [(i, r) for i, r in enumerate(results) if r != reference[PROMPTS[i % len(PROMPTS)]]]
    assert not mismatched, mismatched[:3]
    assert health["status"] == "ok"
    assert all(s["sequences"] == 0 for s in health["stages"]), health  # nothing left behind
    print(f"{CLIENTS} streams x {TOKENS} tokens in {wall_s:.1f} s ({CLIENTS * TOKENS / wall_s:.0f} tok/s)")

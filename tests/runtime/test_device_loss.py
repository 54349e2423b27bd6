"""A stage worker killed for real (SIGKILL to its process) in the middle of streaming requests.

Plan `examples/plans/local-1p2d.json`: one PREFILL replica and two DECODER replicas. While 8
greedy streams decode, the process of decoder replica 1 is killed. Every stream must end:
completed with exactly the text it has when served alone (the ones on replica 1 migrate:
re-prefilled on the PREFILL replica and handed to replica 2), or with an explicit error event;
none may hang. `/health` then reports the loss, new requests are served by what remains, and once
the PREFILL replica is killed too, requests get an explicit 503 while `/health` keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2llm.bench.local_server import serving_plan

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
TOKENS = 24
STREAMS = 8
PROMPTS = ["The capital of France is", "One, two, three,", "def fib(n):", "Water boils at"]
PLAN = json.loads((Path(__file__).parents[2] / "examples" / "plans" / "local-1p2d.json").read_text())


def _body(prompt: str, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


async def _stream(client: httpx.AsyncClient, prompt: str, started: asyncio.Queue[None]) -> tuple[str, str]:
    """(text, outcome): outcome is the finish reason, or 'error: ...' from an error event."""
    text, outcome, chunks = "", "none", 0
    async with client.stream("POST", "/v1/completions", json=_body(prompt, True)) as r:
        if r.status_code != 200:
            return "", f"error: HTTP {r.status_code} {(await r.aread())[:200]!r}"
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return text, f"error: {chunk['error']['message']}"
            for choice in chunk["choices"]:
                text += choice["text"]
                outcome = choice["finish_reason"] or outcome
            chunks += 1
            if chunks == 3:
                started.put_nowait(None)
    return text, outcome


def _pids(health: dict[str, Any], replica: int) -> list[int]:
    return [s["pid"] for s in health["stages"] if s["replica"] == replica]


async def _kill_during_streams(url: str) -> tuple[dict[str, str], list[tuple[str, str]], float]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        reference = {}
        for p in PROMPTS:  # one at a time, nothing else running
            r = await client.post("/v1/completions", json=_body(p, False))
            reference[p] = r.json()["choices"][0]["text"]
        pids = _pids((await client.get("/health")).json(), 1)
        started: asyncio.Queue[None] = asyncio.Queue()
        jobs = [
            asyncio.create_task(_stream(client, PROMPTS[i % len(PROMPTS)], started)) for i in range(STREAMS)
        ]
        for _ in range(STREAMS):  # every stream is decoding now
            await asyncio.wait_for(started.get(), 60)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*jobs), 120)  # none may hang
        return reference, results, time.monotonic() - t0


def test_killed_decoder_migrates_its_streams_and_the_server_serves_on(tmp_path: Path) -> None:
    with serving_plan(PLAN, tmp_path) as (url, _, _):
        reference, results, _ = asyncio.run(_kill_during_streams(url))
        for i, (text, outcome) in enumerate(results):
            expected = reference[PROMPTS[i % len(PROMPTS)]]
            ok = (outcome == "length" and text == expected) or outcome.startswith("error: ")
            assert ok, (i, text, outcome)
        completed = sum(outcome == "length" for _, outcome in results)
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["status"] == "degraded"
        assert [(r["replica"], r["devices"]) for r in health["lost_replicas"]] == [(1, ["cpu1"])]
        assert health["migrations"] >= 1 and completed == STREAMS, (health, results)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'replica="1"' not in metrics and 'replica="2"' in metrics  # no stale series of the lost one
        after = httpx.post(f"{url}/v1/completions", json=_body(PROMPTS[0], False), timeout=60)
        assert after.status_code == 200 and after.json()["choices"][0]["text"] == reference[PROMPTS[0]]

        os.kill(_pids(health, 0)[0], signal.SIGKILL)  # the only PREFILL replica
        deadline = time.monotonic() + 30
        while True:
            r = httpx.post(f"{url}/v1/completions", json=_body(PROMPTS[1], False), timeout=60)
            if r.status_code != 200 or time.monotonic() > deadline:
                break
        # The request that met the dead worker failed explicitly; later ones are refused upfront.
        assert r.status_code == 503 and "no live replica can prefill" in r.json()["error"]["message"], r.text
        refused = httpx.post(f"{url}/v1/completions", json=_body(PROMPTS[1], False), timeout=60)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert {r["replica"] for r in health["lost_replicas"]} == {0, 1}

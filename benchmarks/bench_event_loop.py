"""Does tokenising big prompts stall the other streams? (issue 13, item 7)

Starts `e2llm serve` (SmolLM2-135M, one COLOCATED replica on one emulated device) with the
e2llm code this Python imports, streams one long greedy completion, and measures the gaps
between its chunks: first alone for QUIET_S seconds, then while BURST prompts of
`--prompt-bytes` each (too long for the model's context: each gets a 400) arrive at once.
Reports the worst and median gap in each phase and the answers to the big prompts. To compare
with older code, export it and put it first on the path (the server and its Ray workers
inherit PYTHONPATH):

    .venv/bin/python benchmarks/bench_event_loop.py [--prompt-bytes 400000]
    git archive OLD | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/bench_event_loop.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from e2llm.bench.local_server import serving_plan

MODEL = "smollm2-135m"
BURST = 12
PROMPT_BYTES = 1_000_000
QUIET_S = 8.0
PLAN = json.loads((Path(__file__).resolve().parents[1] / "examples/plans/local-colocated.json").read_text())
HEADERS = {"content-type": "application/json"}


async def _stream(client: httpx.AsyncClient, stamps: list[float], done: asyncio.Event) -> None:
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                stamps.append(time.monotonic())
            if done.is_set():
                break


async def _big(client: httpx.AsyncClient, prompt_bytes: int) -> int:
    body = json.dumps({"model": MODEL, "prompt": "word " * (prompt_bytes // 5)})
    r = await client.post("/v1/completions", content=body, headers=HEADERS)
    return r.status_code


def _gaps(stamps: list[float], start: float, end: float, edges: bool) -> list[float]:
    """Gaps between the chunks of [start, end]; with `edges`, also from the last chunk before
    it and to the first after it (a window without any chunk is then one gap, the stall)."""
    before = [t for t in stamps if t < start][-1:] if edges else []
    after = [t for t in stamps if t > end][:1] if edges else []
    inside = before + [t for t in stamps if start <= t <= end] + after
    return [b - a for a, b in itertools.pairwise(inside)]


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


async def _run(url: str, prompt_bytes: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        stamps: list[float] = []
        done = asyncio.Event()
        stream = asyncio.create_task(_stream(client, stamps, done))
        while len(stamps) < 5:
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await asyncio.sleep(QUIET_S)
        t1 = time.monotonic()
        statuses = await asyncio.gather(*(_big(client, prompt_bytes) for _ in range(BURST)))
        t2 = time.monotonic()
        end = max(t2, t1 + QUIET_S)  # the gaps from the burst's start, over at least QUIET_S
        await asyncio.sleep(end - time.monotonic() + 1.0)
        done.set()
        await stream
    quiet, burst = _gaps(stamps, t0, t1, False), _gaps(stamps, t1, end, True)
    return {  # None: fewer than two chunks in the quiet window (a box too busy to measure on)
        "quiet_worst_gap_ms": _ms(max(quiet)) if quiet else None,
        "quiet_median_gap_ms": _ms(statistics.median(quiet)) if quiet else None,
        "burst_worst_gap_ms": _ms(max(burst)),
        "burst_median_gap_ms": _ms(statistics.median(burst)),
        "burst_s": round(t2 - t1, 2),
        "big_prompt_statuses": sorted(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt-bytes", type=int, default=PROMPT_BYTES, help="size of each big prompt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serving_plan(PLAN, Path(tmp)) as server:
        figures = asyncio.run(_run(server.url, args.prompt_bytes))
    code = os.environ.get("PYTHONPATH") or "this checkout"
    print(json.dumps({"code": code, "prompt_bytes": args.prompt_bytes, **figures}))


if __name__ == "__main__":
    main()

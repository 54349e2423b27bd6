"""Device loss under load: kill a decoder's stage worker (SIGKILL) while clients stream, and measure.

Starts `e2llm serve examples/plans/local-1p2d.json` (SmolLM2-135M, local emulated devices: one
PREFILL replica, two DECODER replicas), runs CLIENTS closed-loop streaming clients (greedy, TOKENS
tokens each, EOS ignored) for RUN_S seconds, and kills the process of decoder replica 1 at
KILL_AT_S. Reports:

- detection: loss -> `/health` says "degraded" (polled every 50 ms);
- router serving again: loss -> first token of a request that arrived after the loss;
- tokens/s before the loss, in the RECOVERY_S after it, and after that;
- requests completed / migrated / failed, and completed ones whose text differs from the same
  prompt served alone (greedy; must be 0).

The plan is hand-written (it embeds no cluster), so the runtime does not re-plan after the loss:
there is no "new plan live" figure here (tests/runtime/test_replan.py measures that).
Run: `.venv/bin/python benchmarks/bench_device_loss.py` (about 1.5 min).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from e2llm.bench.local_server import ServerFailed, local_server

MODEL = "smollm2-135m"
CLIENTS = 8
TOKENS = 16
RUN_S = 40.0
KILL_AT_S = 15.0
RECOVERY_S = 5.0
PROMPTS = ["The capital of France is", "One, two, three,", "def fib(n):", "Water boils at"]
PLAN = Path(__file__).resolve().parents[1] / "examples" / "plans" / "local-1p2d.json"


def _body(prompt: str, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


class Record:
    def __init__(self, prompt: str, start: float):
        self.prompt, self.start = prompt, start
        self.token_times: list[float] = []
        self.text, self.outcome = "", "none"


async def _one(client: httpx.AsyncClient, prompt: str) -> Record:
    rec = Record(prompt, time.monotonic())
    try:
        async with client.stream("POST", "/v1/completions", json=_body(prompt, True)) as r:
            if r.status_code != 200:
                rec.outcome = f"error: HTTP {r.status_code}"
                return rec
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    rec.outcome = "error: " + chunk["error"]["message"]
                    return rec
                for choice in chunk["choices"]:
                    rec.text += choice["text"]
                    rec.token_times.append(time.monotonic())
                    rec.outcome = choice["finish_reason"] or rec.outcome
    except httpx.HTTPError as e:
        rec.outcome = f"error: {type(e).__name__}"
    return rec


async def _client(client: httpx.AsyncClient, i: int, stop_at: float, out: list[Record]) -> None:
    n = i
    while time.monotonic() < stop_at:
        out.append(await _one(client, PROMPTS[n % len(PROMPTS)]))
        n += 1


async def _watch_health(client: httpx.AsyncClient, since: float, stop_at: float) -> float | None:
    while time.monotonic() < stop_at:
        if (await client.get("/health")).json()["status"] == "degraded":
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


async def _bench(url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        reference = {}
        for p in PROMPTS:
            reference[p] = (await client.post("/v1/completions", json=_body(p, False))).json()["choices"][0][
                "text"
            ]
        pids = [s["pid"] for s in (await client.get("/health")).json()["stages"] if s["replica"] == 1]
        t0 = time.monotonic()
        stop_at = t0 + RUN_S
        records: list[Record] = []
        clients = [asyncio.create_task(_client(client, i, stop_at, records)) for i in range(CLIENTS)]
        await asyncio.sleep(KILL_AT_S)
        kill_s = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        detect_s = await _watch_health(client, kill_s, stop_at)
        await asyncio.gather(*clients)
        health = (await client.get("/health")).json()
    done = [r for r in records if r.outcome == "length"]
    failed = [r for r in records if r.outcome.startswith("error")]
    after = [r for r in records if r.start > kill_s and r.token_times]
    serving_again_s = min(r.token_times[0] for r in after) - kill_s if after else None

    def tok_s(a: float, b: float) -> float:
        return sum(a <= t < b for r in records for t in r.token_times) / (b - a)

    return {
        "clients": CLIENTS,
        "tokens_per_request": TOKENS,
        "detect_s": detect_s,
        "router_serving_again_s": serving_again_s,
        "tok_s_before": tok_s(t0 + 3, kill_s),
        "tok_s_recovery": tok_s(kill_s, kill_s + RECOVERY_S),
        "tok_s_after": tok_s(kill_s + RECOVERY_S, stop_at),
        "requests": len(records),
        "completed": len(done),
        "migrated": health["migrations"],
        "failed": len(failed),
        "failures": sorted({r.outcome for r in failed})[:3],
        "wrong_text": sum(r.text != reference[r.prompt] for r in done),
        "lost_replicas": health["lost_replicas"],
        "latency_median_s": statistics.median(r.token_times[-1] - r.start for r in done) if done else None,
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with local_server([str(PLAN)], Path(tmp) / "serve.log") as server:
                result = asyncio.run(_bench(server.url))
        except ServerFailed as e:
            print(e, file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate throughput of the default `e2llm serve` under 1 / 8 / 16 / 32 streaming clients.

Issue 11 ("decoders fill their batch"): a PREFILL replica used to hold a prompt until its request
had finished decoding, so the default server never decoded more than a few sequences at once;
now the hold ends at the KV hand-off and the decoder fills its batch up to its planned
concurrency. Target: 16 streams >= 4x the aggregate tokens/s of one stream.

Starts `e2llm serve` with no arguments (the planner's plan for examples/clusters/local-cpu.yaml:
one PREFILL and one DECODER replica of two emulated devices each, SmolLM2-135M fp32) and, with
`--baseline REF`, a second one running the `src/` of git commit REF (exported to a temporary
folder, put first on PYTHONPATH). Then, in interleaved rounds (every client count, on every
server, in each round), N closed-loop clients stream greedy completions of TOKENS tokens (EOS
ignored, PROMPT_TOKENS-token prompts) for --seconds; the aggregate is the tokens received over
the time from the first request to the last token. The decode batch is sampled from `/metrics`
(`e2llm_decode_batch_size`) every 0.5 s. Medians over the rounds; load average with each figure.

    .venv/bin/python benchmarks/bench_serve_streams.py [--baseline f7ee470] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from e2llm.bench.client import completion_payload, stream_completion
from e2llm.bench.load import prompt_ids
from e2llm.bench.local_server import local_server
from e2llm.bench.server_metrics import metric_sum, scrape
from e2llm.specs.workload import Request

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
CLIENTS = (1, 8, 16, 32)
TOKENS = 64
PROMPT_TOKENS = 32
SAMPLE_S = 0.5


async def _client(http: httpx.AsyncClient, url: str, first_id: int, stop_at: float) -> tuple[int, float]:
    """Stream requests back to back until `stop_at`: (tokens received, time of the last one)."""
    tokens, last, n = 0, 0.0, first_id
    while time.perf_counter() < stop_at:
        payload = completion_payload(MODEL, prompt_ids(Request(n, 0.0, PROMPT_TOKENS, TOKENS)), TOKENS)
        outcome = await stream_completion(http, f"{url}/v1/completions", payload)
        if outcome.error is not None:
            raise RuntimeError(f"request failed: {outcome.error}")
        tokens += outcome.tokens
        last = max(last, outcome.last_token_s or 0.0)
        n += 1000
    return tokens, last


async def _batch_sizes(url: str, done: asyncio.Event) -> list[float]:
    sizes = []
    while not done.is_set():
        text = await asyncio.to_thread(scrape, url)
        sizes.append(metric_sum(text or "", "e2llm_decode_batch_size") or 0.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SAMPLE_S)
    return sizes


async def _run(url: str, clients: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=clients + 4)
    timeout = httpx.Timeout(300.0, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        done = asyncio.Event()
        sampler = asyncio.create_task(_batch_sizes(url, done))
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_client(http, url, i, t0 + seconds) for i in range(clients)))
        done.set()
        sizes = await sampler
    tokens = sum(t for t, _ in results)
    span = max(last for _, last in results) - t0
    return {
        "tok_s": tokens / span,
        "tokens": tokens,
        "seconds": span,
        "batch_max": max(sizes, default=0.0),
        "batch_mean": statistics.fmean(sizes) if sizes else 0.0,
        "loadavg": load,
    }


@contextlib.contextmanager
def _servers(folder: Path, baseline: str | None) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        urls = {"this": stack.enter_context(local_server([], folder / "serve.log", cwd=ROOT)).url}
        if baseline:
            old = folder / "baseline"
            old.mkdir()
            archive = subprocess.run(
                ["git", "archive", baseline, "src"], cwd=ROOT, capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            env = {"PYTHONPATH": str(old / "src")}
            log = folder / "serve-baseline.log"
            urls[baseline] = stack.enter_context(local_server([], log, cwd=ROOT, env=env)).url
        yield urls


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", help="also serve the src/ of this git commit, side by side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="closed-loop time per run")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    runs: dict[str, dict[int, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp, _servers(Path(tmp), args.baseline) as urls:
        for name, url in urls.items():  # warm-up: first requests pay for lazy initialisation
            asyncio.run(_run(url, 2, 2.0))
            runs[name] = {n: [] for n in CLIENTS}
        for r in range(args.rounds):
            for n in CLIENTS:
                for name, url in urls.items():
                    result = asyncio.run(_run(url, n, args.seconds))
                    runs[name][n].append(result)
                    print(
                        f"round {r + 1} {name} {n:>2} clients: {result['tok_s']:.1f} tok/s, "
                        f"batch max {result['batch_max']:.0f}, load {result['loadavg']:.1f}",
                        flush=True,
                    )
    print(
        f"\n{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of {args.rounds} rounds"
    )
    print("| server | clients | aggregate tok/s | vs 1 stream | decode batch max | load avg |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, by_n in runs.items():
        one = statistics.median(x["tok_s"] for x in by_n[1])
        for n, results in by_n.items():
            tok_s = statistics.median(x["tok_s"] for x in results)
            batch = statistics.median(x["batch_max"] for x in results)
            load = statistics.median(x["loadavg"] for x in results)
            print(f"| {name} | {n} | {tok_s:.1f} | {tok_s / one:.2f}x | {batch:.0f} | {load:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runtime benchmark: the Ray pipeline against single-process transformers, on SmolLM2-135M.

Measures (medians over --repeats):
  1. single-stream decode tok/s of a 2-stage and a 4-stage local pipeline (Ray actors) vs
     transformers `generate` in one process (target: >= 0.8x);
  2. aggregate generated tok/s of --streams concurrent streams vs 1 stream on the 2-stage
     pipeline (continuous batching; target: >= 4x);
  3. PREFILL -> DECODER KV hand-off time for a 1,024-token prompt (replicas split differently);
  4. per-token pipeline overhead: decode step wall time minus the stages' compute time, per hop.

Outputs ignore EOS so every run generates exactly --tokens tokens.

    .venv/bin/python benchmarks/bench_runtime.py [--device cuda] [--tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

import torch

from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.runtime.cluster import start_ray, stop_ray
from e2llm.runtime.generation import Generation, TextStream
from e2llm.runtime.plans import split_layers
from e2llm.runtime.service import Deployment, LaunchOptions
from e2llm.runtime.text import encode_chat
from e2llm.runtime.weights import PreparedModel, default_model_source, prepare_model

DEVICES = ["dev0", "dev1", "dev2", "dev3"]
PROMPT = [{"role": "user", "content": "Tell me a long story about a dragon who learns to cook."}]


def _plan(replicas: list[Replica]) -> Plan:
    return Plan("bench", "smollm2-135m", 0.0, "bottleneck_s", tuple(replicas))


def _stages(devices: list[str], ranges: list[tuple[int, int]]) -> tuple[Stage, ...]:
    last = len(ranges) - 1
    return tuple(
        Stage(d, a, b, embedding=i == 0, lm_head=i == last)
        for i, (d, (a, b)) in enumerate(zip(devices, ranges, strict=True))
    )


class Reference:
    """Single-process transformers `generate`, greedy with EOS ignored."""

    def __init__(self, prepared: PreparedModel, ids: list[int], device: str):

        self.model = prepared.transformers_model(torch.float32).to(device)
        self.x = torch.tensor([ids], device=device)
        self.device = device
        self._run(4)  # warm-up

    def _run(self, n: int) -> float:
        t0 = time.perf_counter()
        self.model.generate(self.x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def decode_tok_s(self, tokens: int) -> float:
        """(tokens - 1) / (time(tokens) - time(1)): decode only, prefill subtracted. The best of
        1 torch thread and all cores: the strictest baseline (decode is memory-bound, and on a
        busy machine several threads can be slower than one)."""
        rates = []
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            rates.append((tokens - 1) / (self._run(tokens) - self._run(1)))
        return max(rates)


def _gen(ids: list[int], tokens: int, tokenizer: Any) -> Generation:
    return Generation(
        ids, tokens, 0.0, 1.0, None, frozenset(), TextStream(tokenizer), ignore_eos=True, min_tokens=tokens
    )


async def _finish(gen: Generation) -> None:
    while (await gen.events.get()).finish_reason is None:
        pass


async def _run(deployment: Deployment, gens: list[Generation]) -> float:
    """Submit all at once; wall seconds until the last finishes."""
    t0 = time.monotonic()
    for g in gens:
        deployment.submit(g)
    await asyncio.gather(*(_finish(g) for g in gens))
    return time.monotonic() - t0


def _colocated(prepared: PreparedModel, n_stages: int, args: argparse.Namespace) -> Deployment:
    ranges = split_layers(prepared.config.n_layers, n_stages)
    replica = Replica(0, Role.COLOCATED, _stages(DEVICES[:n_stages], ranges), concurrency=args.streams)
    return Deployment.launch(_plan([replica]), str(prepared.path), _options(args))


async def _single_stream(
    deployment: Deployment, ids: list[int], tokenizer: Any, tokens: int
) -> tuple[float, float]:
    """One stream: (decode tok/s after the first token, overhead s/token beyond stage compute)."""
    before = await deployment.stage_stats()
    g = _gen(ids, tokens, tokenizer)
    await _run(deployment, [g])
    after = await deployment.stage_stats()
    assert g.first_token_s is not None and g.finished_s is not None
    wall, steps = g.finished_s - g.first_token_s, tokens - 1
    compute = sum(
        a["compute_s"]["decode"] - b["compute_s"]["decode"] for a, b in zip(after, before, strict=True)
    )
    return steps / wall, (wall - compute) / steps


def bench_pipelines(
    prepared: PreparedModel, ids: list[int], tokenizer: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """2- and 4-stage pipelines vs transformers, measured back to back in each repeat so that
    load from other processes hits all three alike; ratios are medians of per-repeat ratios."""
    reference = Reference(prepared, ids, args.device)
    deployments = {k: _colocated(prepared, k, args) for k in (2, 4)}
    rows: dict[str, list[float]] = {"ref": []}
    for k in deployments:
        rows.update({f"{k}_tok_s": [], f"{k}_ratio": [], f"{k}_overhead": []})
    out: dict[str, Any] = {}

    async def main() -> None:
        for d in deployments.values():
            d.start()
            await _run(d, [_gen(ids, 4, tokenizer)])  # warm-up
        for _ in range(args.repeats):
            ref = reference.decode_tok_s(args.tokens)
            rows["ref"].append(ref)
            for k, d in deployments.items():
                rate, overhead = await _single_stream(d, ids, tokenizer, args.tokens)
                rows[f"{k}_tok_s"].append(rate)
                rows[f"{k}_ratio"].append(rate / ref)
                rows[f"{k}_overhead"].append(overhead)
        single, multi = [], []
        two = deployments[2]
        for _ in range(args.repeats):
            single.append(args.tokens / await _run(two, [_gen(ids, args.tokens, tokenizer)]))
            gens = [_gen(ids, args.tokens, tokenizer) for _ in range(args.streams)]
            multi.append(args.streams * args.tokens / await _run(two, gens))
        out["one_stream_tok_s"] = statistics.median(single)
        out["aggregate_tok_s"] = statistics.median(multi)
        for d in deployments.values():
            await d.stop()

    try:
        asyncio.run(main())
    finally:
        for d in deployments.values():
            d.kill_actors()
    med = {key: statistics.median(v) for key, v in rows.items()}
    out["transformers_decode_tok_s"] = med["ref"]
    out["pipelines"] = [
        {
            "stages": k,
            "decode_tok_s": med[f"{k}_tok_s"],
            "ratio": med[f"{k}_ratio"],
            "overhead_ms_per_token": 1e3 * med[f"{k}_overhead"],
            "hops_per_token": k + 1,  # driver -> stage 0 -> ... -> last stage -> driver
            "overhead_ms_per_hop": 1e3 * med[f"{k}_overhead"] / (k + 1),
        }
        for k in deployments
    ]
    out["streams"] = args.streams
    return out


def bench_handoff(prepared: PreparedModel, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    n = prepared.config.n_layers
    prefill = Replica(0, Role.PREFILL, _stages(DEVICES[:2], [(0, n // 2), (n // 2, n)]))
    decoder = Replica(1, Role.DECODER, _stages(DEVICES[2:], [(0, n // 3), (n // 3, n)]), concurrency=4)
    deployment = Deployment.launch(_plan([prefill, decoder]), str(prepared.path), _options(args))
    ids = (tokenizer.encode(" ".join(["edge"] * 2000)))[:1024]
    times, sizes = [], []

    async def main() -> None:
        deployment.start()
        for _ in range(args.repeats + 1):  # the first one warms up
            g = _gen(ids, 2, tokenizer)
            await _run(deployment, [g])
            assert g.handoff_s is not None
            times.append(g.handoff_s)
            sizes.append(g.handoff_bytes)
        await deployment.stop()

    try:
        asyncio.run(main())
    finally:
        deployment.kill_actors()
    return {
        "prompt_tokens": len(ids),
        "handoff_ms": 1e3 * statistics.median(times[1:]),
        "kv_mb": sizes[-1] / 1e6,
    }


def _options(args: argparse.Namespace) -> LaunchOptions:
    return LaunchOptions(torch_device=args.device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=48, help="generated tokens per stream")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    prepared = prepare_model(default_model_source())
    tokenizer = prepared.tokenizer()
    ids = encode_chat(tokenizer, PROMPT)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tokens": args.tokens,
        "prompt_tokens": len(ids),
    }
    start_ray(DEVICES)
    try:
        results.update(bench_pipelines(prepared, ids, tokenizer, args))
        results["handoff"] = bench_handoff(prepared, tokenizer, args)
    finally:
        stop_ray()
    ref = results["transformers_decode_tok_s"]
    print(f"{results['machine']}, {results['date']}, {args.tokens} tokens, medians of {args.repeats}")
    print(f"transformers generate (1 process): {ref:.1f} tok/s")
    for p in results["pipelines"]:
        print(
            f"{p['stages']}-stage Ray pipeline: {p['decode_tok_s']:.1f} tok/s "
            f"({p['ratio']:.2f}x), "
            f"overhead {p['overhead_ms_per_token']:.1f} ms/token = {p['overhead_ms_per_hop']:.1f} ms x "
            f"{p['hops_per_token']} hops"
        )
    speedup = results["aggregate_tok_s"] / results["one_stream_tok_s"]
    print(
        f"2-stage, {args.streams} streams: {results['aggregate_tok_s']:.1f} tok/s aggregate vs 1 stream "
        f"{results['one_stream_tok_s']:.1f} tok/s ({speedup:.1f}x)"
    )
    h = results["handoff"]
    print(f"KV hand-off, {h['prompt_tokens']}-token prompt: {h['handoff_ms']:.0f} ms for {h['kv_mb']:.1f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()

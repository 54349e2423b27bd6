"""The e2llm engine vs llama.cpp on the same GGUF, single stream (issue 11).

For each engine (the e2llm stage engine at the plan's precision q4: int4 groups, int8 table, bf16
activations; llama.cpp through `llama-cpp-python`) and each thread count, a fresh process measures
- prompt: a 512-token prompt into an empty cache, tokens/s;
- decode: 64 greedy tokens at batch 1 after it (tokens/s);
- RSS: the process's peak resident memory after both (`ru_maxrss`);
- perplexity over the same 512 tokens (teacher-forced next-token NLL).
Rounds are interleaved (engine x threads in turn, `--rounds` times) and medians reported, since
the machine is shared. llama.cpp is a benchmark-only extra: `pip install -e '.[bench]'` (it
builds from source, ~20 min on 2 cores).

    .venv/bin/python benchmarks/bench_engine_llamacpp.py [--rounds 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT_TOKENS = 512
DECODE_TOKENS = 64
N_CTX = 1024  # KV positions both engines hold


def _tokens(n: int) -> list[int]:
    """A fixed text (this repository's README, repeated as needed) tokenized by the model."""
    from e2llm.runtime.weights import default_model_source, prepare_model

    tok = prepare_model(default_model_source()).tokenizer()
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    ids = list(tok.encode(text))
    while len(ids) < n:
        ids += ids
    return ids[:n]


def _nll(logits: Any, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of `ids` given logits [T, vocab] (numpy)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)[:-1]
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(ids) - 1), ids[1:]]))


def run_e2llm(threads: int, ids: list[int]) -> dict[str, float]:
    import torch

    from e2llm.runtime.engine import load_stage
    from e2llm.runtime.weights import default_model_source, prepare_model

    torch.set_num_threads(threads)
    prepared = prepare_model(default_model_source())
    stage = load_stage(prepared, 0, prepared.config.n_layers, dtype=torch.bfloat16, precision="q4")
    stage.reserve_kv(1, N_CTX)  # as llama.cpp's context
    prompt = torch.tensor(ids)
    stage.prefill("warm", prompt[:16])
    stage.decode(["warm"], prompt[15:16])
    stage.free("warm")
    t0 = time.perf_counter()
    logits = stage.prefill("s", prompt)
    prompt_s = time.perf_counter() - t0
    token = logits.argmax()[None]
    t0 = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        token = stage.decode(["s"], token).argmax(-1)
    decode_s = time.perf_counter() - t0
    ops = _ops_per_token(stage, token)
    stage.free("s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the all-logits pass
    full = stage.prefill("p", prompt, all_logits=True)
    return {
        "prompt_tok_s": len(ids) / prompt_s,
        "decode_tok_s": DECODE_TOKENS / decode_s,
        "rss_mib": rss,
        "ppl": math.exp(_nll(full.float().numpy(), ids)),
        "ops_per_token": ops,
    }


def _ops_per_token(stage: Any, token: Any) -> float:
    """ATen ops one batch-1 decode step dispatches (what bounds a CPU's batch-1 decode speed)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        stage.decode(["s"], token)
    return float(Count.n)


def run_llamacpp(threads: int, ids: list[int]) -> dict[str, float]:
    import numpy as np
    from llama_cpp import Llama

    from e2llm.runtime.weights import default_model_source

    path = str(default_model_source().path)
    opts = dict(n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
    llm = Llama(path, **opts)
    llm.eval(ids[:16])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prompt_s = time.perf_counter() - t0
    vocab = llm.n_vocab()

    def last_logits(model: Llama) -> np.ndarray:  # without logits_all no scores are kept
        return np.ctypeslib.as_array(model._ctx.get_logits(), shape=(vocab,))

    token = int(np.argmax(last_logits(llm)))
    t0 = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    decode_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the all-logits pass
    del llm
    scorer = Llama(path, logits_all=True, **opts)
    scorer.eval(ids)
    ppl = math.exp(_nll(np.array(scorer.scores[: len(ids)]), ids))
    return {
        "prompt_tok_s": len(ids) / prompt_s,
        "decode_tok_s": DECODE_TOKENS / decode_s,
        "rss_mib": rss,
        "ppl": ppl,
    }


ENGINES = {"e2llm": run_e2llm, "llama.cpp": run_llamacpp}


def worker(engine: str, threads: int, ids_file: str) -> None:
    """One measurement in this fresh process (token ids from the parent: no tokenizer here, so
    RSS counts the engine only)."""
    ids = json.loads(Path(ids_file).read_text())
    print(json.dumps(ENGINES[engine](threads, ids)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "THREADS", "IDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return
    ids_file = Path(tempfile.mkdtemp(prefix="e2llm-bench-")) / "ids.json"
    ids_file.write_text(json.dumps(_tokens(PROMPT_TOKENS)))
    machine = platform.processor() or platform.machine()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine}, {os.cpu_count()} cores")
    print(f"# load average at start: {os.getloadavg()}")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for threads in args.threads:
            for engine in args.engines:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", engine, str(threads), str(ids_file)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((engine, threads), []).append(row)
                print(f"round {r} {engine:9s} {threads}t {row}", flush=True)
    print(f"# load average at end: {os.getloadavg()}")
    print(
        "| engine | threads | prompt 512 tok/s | decode tok/s | decode vs llama.cpp | RSS MiB | ppl"
        " | ops/token |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (engine, threads), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        ref = results.get(("llama.cpp", threads))
        ratio = (
            med["decode_tok_s"] / statistics.median(r["decode_tok_s"] for r in ref) if ref else float("nan")
        )
        print(
            f"| {engine} | {threads} | {med['prompt_tok_s']:.0f} | {med['decode_tok_s']:.1f} | {ratio:.2f} | "
            f"{med['rss_mib']:.0f} | {med['ppl']:.2f} | {med.get('ops_per_token', float('nan')):.0f} |"
        )


if __name__ == "__main__":
    main()

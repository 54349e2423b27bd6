"""What a MIXED replica does at run time (the contract the planner's capacity model matches).

A MIXED replica runs both phases on one group of devices, Sarathi-Serve style (Agrawal et al.,
OSDI 2024): every iteration is one decode step of its whole batch (each active sequence gains one
token) plus a chunk of waiting prompts, the iteration holding at most `chunk_tokens` tokens
(`PolicySettings.chunk_tokens`, default 512): decode tokens first, the rest of the budget to
prompt tokens, taken from the prompts in arrival order (one iteration may finish one prompt and
start the next). So decoding never stalls behind a long prompt, and a prompt's prefill
advances by `chunk_tokens - batch` tokens per iteration.

- Admission: a prompt starts its chunked prefill only when it has a decode slot (its
  concurrency) and its final context's KV fits, because it decodes where it was prefilled; no KV
  crosses the network. Its first token comes out when its last chunk is done; it joins the batch
  there (its second token one iteration later).
- Iteration time on a pipeline of k stages: the iteration is split into k micro-batches that cycle
  through the stages (as a decode step is, `state.decode_step`); each carries 1/k of the decode
  batch and 1/k of the chunk. A stage's time per micro-batch is its decode time for its share of
  the batch plus its share of the chunk's prefill time (the chunk costed as the slice of the
  prompt it is, attending to the chunks before it); the period is max(lap, k x slowest stage).
  Decode and chunk times are added, not overlapped: a fused kernel reads the weights once, so
  this is an upper bound on the iteration (a MIXED replica is, if anything, rated low).
- Without waiting prompts a MIXED replica decodes exactly like a DECODER; with no sequences to
  decode it prefills chunk by chunk at the rate its pipeline sustains for `chunk_tokens`-token
  slices.

The planner's view (plan/roles.py, plan/evaluate.py): a MIXED replica splits its time between the
phases; per iteration it generates `batch` tokens and prefills `chunk_tokens - batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from e2llm.cost.model import CostModel
from e2llm.plan.types import Stage
from e2llm.policy import chunking
from e2llm.sim.state import Job


class Prefilling:
    """A prompt being prefilled chunk by chunk: `done` of its input tokens are in the cache."""

    __slots__ = ("done", "job")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.done = 0


def plan_chunks(queue: Sequence[Prefilling], batch: int, chunk_tokens: int) -> list[tuple[Prefilling, int]]:
    """The prompt slices of one iteration beside a decode batch of `batch`: (prompt, tokens) in
    order (`policy.chunking.plan_chunks`)."""
    sizes = chunking.plan_chunks([p.job.input_tokens - p.done for p in queue], batch, chunk_tokens)
    return list(zip(queue, sizes, strict=False))


def mixed_step(
    cost: CostModel,
    stages: Sequence[Stage],
    batch: int,
    context: int,
    chunk_s: Sequence[float],
    chunk_tokens: int,
) -> tuple[float, list[float]]:
    """Seconds of one iteration (decode step of `batch` sequences at mean `context` + a chunk of
    `chunk_tokens` prompt tokens costing `chunk_s[k]` on stage k), and each stage's busy share."""
    k = len(stages)
    b = math.ceil(batch / k)
    slice_tokens = chunk_tokens / k
    times = [
        (
            cost.stage_decode_s(s.device, s.n_layers, b, context, embedding=s.embedding, lm_head=s.lm_head)
            if b
            else 0.0
        )
        + c / k
        for s, c in zip(stages, chunk_s, strict=True)
    ]
    lap = sum(times)
    for i in range(k - 1):
        lap += cost.hop_s(stages[i].device, stages[i + 1].device, math.ceil(b + slice_tokens))
    if k > 1 and b:
        lap += cost.transfer_s(stages[-1].device, stages[0].device, 4.0 * b)  # token ids back
    cycle = max(lap, k * max(times))
    return cycle, [min(1.0, k * t / cycle) if cycle > 0 else 0.0 for t in times]

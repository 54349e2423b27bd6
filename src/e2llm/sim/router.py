"""Where each request goes: the plan's scheduler ("jsq" or "splitwise").

- jsq (the method): a prompt goes to the prefill-capable replica with the smallest estimated
  wait. For a PREFILL pipeline that is its backlog (bottleneck-stage seconds of the prompts routed
  to it and not yet done) plus this prompt's own latency through it; for COLOCATED replicas it
  is the same as for decoders, below. After prefill, the KV goes to the decoder with the fewest
  outstanding requests (in transfer, waiting or decoding) per decode slot, ties going to the
  decoder whose full batch generates the most tokens/s. (Ranking decoders by outstanding
  *tokens* over that speed instead, i.e. by expected completion, was tried: it piles requests
  onto the fastest decoder's queue while slots elsewhere are free, and the waiting time grows.)
- splitwise (Splitwise's cluster scheduler): a prompt goes to the prompt-pool machine with the
  fewest pending prompt tokens; the token phase goes to the token-pool machine with the least
  KV memory in use (as a share of its KV capacity, since our pool is heterogeneous).

Only replicas that could ever hold the request's KV are candidates; ties go to the replica
listed first in the plan (deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence

from e2llm.plan.types import Scheduler
from e2llm.sim.decode import DecodeEngine
from e2llm.sim.prefill import PrefillPipeline
from e2llm.sim.state import Job


def pick_prefill(scheduler: Scheduler, pipes: Sequence[PrefillPipeline], job: Job) -> PrefillPipeline | None:
    best: PrefillPipeline | None = None
    best_key = 0.0
    for p in pipes:
        if not p.kv.ever_fits(job.input_tokens):
            continue
        if scheduler is Scheduler.SPLITWISE:
            key = float(p.pending_tokens)
        else:
            key = p.backlog_s + p.estimate(job.input_tokens)[1]
        if best is None or key < best_key:
            best, best_key = p, key
    return best


def pick_decoder(scheduler: Scheduler, engines: Sequence[DecodeEngine], job: Job) -> DecodeEngine | None:
    """A decoder for the token phase, or a COLOCATED replica for the whole request."""
    context = job.input_tokens + job.output_tokens // 2
    best: DecodeEngine | None = None
    best_key = (0.0, 0.0)
    for e in engines:
        if not e.kv.ever_fits(job.final_context):
            continue
        if scheduler is Scheduler.SPLITWISE:
            key = (e.reserved_kv / max(sum(e.kv.capacity), 1.0), 0.0)
        else:
            key = (e.assigned / e.replica.concurrency, -e.capacity_tok_s(context))
        if best is None or key < best_key:
            best, best_key = e, key
    return best

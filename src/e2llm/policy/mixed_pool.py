"""Splitwise's scheduler with its mixed pool, for the `splitwise` baseline.

Source: SplitwiseSim (Patel et al., ISCA 2024; github.com/Mutinifni/splitwise-sim, commit
8f99e7d), `scheduler.py` class `MixedPoolScheduler`, with `prompt_max_pending_batch_tokens: 8192`
from `configs/orchestrator_repo/schedulers/mixed_pool.yml`. Its rules, as they apply here:

- A prompt goes to the prompt-pool machine with the fewest pending tokens (`sched_pending_tokens`:
  prompt tokens not yet prefilled plus one per token task); if that machine's queue is long
  (something is waiting there and its pending tokens plus this prompt pass 8,192,
  `is_queue_long`), the mixed pool is tried the same way; if that fails too, the token machine
  with the fewest pending tokens is borrowed into the mixed pool and takes the prompt.
- The token phase goes to the token-pool machine with the least KV memory in use
  (`sched_memory`), else to the mixed pool's; if memory is full there too (`is_memory_loaded`),
  the prompt machine with the least memory in use is borrowed into the mixed pool and takes it.
  If nothing is left to borrow the request stays where it was prefilled (Splitwise "devolves to
  mixed batching"); `None` tells the caller so.
- A borrowed machine does both phases (mixed batching, prompts first, whole prompts) and returns
  to its own pool as soon as it is idle (`notify_free_instance`: empty batch, nothing pending).

Our pools are heterogeneous (SplitwiseSim's machines within a pool are identical), so memory in
use is a share of each machine's KV capacity, and "memory is full" means that no machine of the
pool has the request's KV free (SplitwiseSim checks only the emptiest, which for identical
machines is the same thing). Where Splitwise picks the token machine at arrival, we pick it when
the prompt is done, with the memory in use then: a better-informed choice, never a weaker one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from e2llm.plan.types import Role
from e2llm.policy.load import ReplicaLoad

PROMPT_QUEUE_TOKENS = 8192  # SplitwiseSim mixed_pool.yml: prompt_max_pending_batch_tokens


@dataclass(frozen=True, slots=True)
class Route:
    replica: int
    borrow: bool = False  # take the replica out of its pool into the mixed pool first


def pending_tokens(r: ReplicaLoad) -> int:
    """SplitwiseSim's `sched_pending_tokens`: prompt tokens to prefill, plus one per token task."""
    return r.queued_prompt_tokens + r.decode_sequences


def _queue_long(r: ReplicaLoad, prompt_tokens: int, limit: int) -> bool:
    return r.prompts_waiting > 0 and pending_tokens(r) + prompt_tokens > limit


def route_prompt(
    loads: Sequence[ReplicaLoad], prompt_tokens: int, limit: int = PROMPT_QUEUE_TOKENS
) -> Route | None:
    """Where a prompt of `prompt_tokens` tokens is prefilled; `None` if no replica can hold it."""
    holds = [r for r in loads if r.kv_capacity_tokens >= prompt_tokens]
    prompt_pool = [r for r in holds if r.role is Role.PREFILL and not r.borrowed]
    mixed_pool = [r for r in holds if r.borrowed]
    for pool in (prompt_pool, mixed_pool):
        if pool:
            best = min(pool, key=pending_tokens)
            if not _queue_long(best, prompt_tokens, limit):
                return Route(best.id)
    token_pool = [r for r in holds if r.role is Role.DECODER and not r.borrowed]
    if token_pool:
        return Route(min(token_pool, key=pending_tokens).id, borrow=True)
    everyone = prompt_pool + mixed_pool
    return Route(min(everyone, key=pending_tokens).id) if everyone else None


def route_token(loads: Sequence[ReplicaLoad], context: int) -> Route | None:
    """Where a prefilled sequence of final context `context` decodes; `None`: nowhere has room
    and nothing is left to borrow (the caller keeps it where it was prefilled, if that replica
    decodes, else queues it at the decode-capable replica with the least memory in use)."""
    holds = [r for r in loads if r.kv_capacity_tokens >= context]
    token_pool = [r for r in holds if r.role is Role.DECODER and not r.borrowed]
    mixed_pool = [r for r in holds if r.borrowed]
    for pool in (token_pool, mixed_pool):
        room = [r for r in pool if r.kv_free_tokens >= context]
        if room:
            return Route(min(room, key=lambda r: r.kv_used_share).id)
    prompt_pool = [r for r in holds if r.role is Role.PREFILL and not r.borrowed and r.concurrency > 0]
    if prompt_pool:
        return Route(min(prompt_pool, key=lambda r: r.kv_used_share).id, borrow=True)
    return None


def least_memory(loads: Sequence[ReplicaLoad], context: int) -> ReplicaLoad | None:
    """When `route_token` finds no room: the decoding replica with the least memory in use among
    those that could ever hold the sequence; it waits there for room."""
    holds = [r for r in loads if r.decodes and r.concurrency > 0 and r.kv_capacity_tokens >= context]
    return min(holds, key=lambda r: r.kv_used_share) if holds else None


def returns(r: ReplicaLoad) -> bool:
    """A borrowed replica goes back to its pool when idle."""
    return r.borrowed and r.queued_prompt_tokens == 0 and r.decode_sequences == 0

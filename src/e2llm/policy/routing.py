"""e2llm's request routing and decode admission (DESIGN "Serving policy").

- `pick_prefill`: a prompt goes to the accepting PREFILL or MIXED replica with the smallest
  normalised backlog (`ReplicaLoad.kv_ready_s`: queued prompt tokens over its prefill rate plus
  the prompt's own latency through it, or the KV hand-offs still on its links if they take
  longer, plus its own hand-off: a replica whose links are slow piles up transfers, and counting
  them keeps prompts away from it). A MIXED replica decodes what it prefills, so a prompt starts
  there only once it has a decode slot and KV room for the whole request: while none is free,
  its backlog adds the wait for the slots ahead (one frees every output length over the batch's
  tokens/s, `decode_tok_s`). Ranking such a replica behind every PREFILL replica instead, with
  prompts bound to a replica on arrival, queued ~500 s of prompts on slow PREFILL replicas of the
  paper testbed (custom, 0.5 s) while its MIXED replicas idled once arrivals stopped.
- `pick_decoder`: a prefilled sequence (or, in a COLOCATED plan, a whole request) goes to the
  accepting decode-capable replica with the fewest outstanding sequences per decode slot among
  those whose free KV holds its final context, ties to the one whose full batch generates the
  most tokens/s. (Ranking by outstanding tokens over that speed, i.e. by expected completion, was
  tried: it piles requests onto the fastest decoder's queue while slots elsewhere are free.)
  When no free KV holds it, it queues at the least loaded replica that could ever hold it.
  (A COLOCATED plan routes whole requests this way: their decode stays where they are prefilled.)
- `admits`: a waiting sequence joins a decode batch at a step boundary when a slot is free and
  its final context's KV fits. Callers admit in arrival order and stop at the first refusal (no
  overtaking, so a long request is never starved by short ones).

Only replicas whose empty KV memory could hold the request are candidates; ties go to the replica
listed first (deterministic). `None`: no replica can ever serve it.
"""

from __future__ import annotations

from collections.abc import Sequence

from e2llm.plan.types import Role
from e2llm.policy.load import ReplicaLoad


def pick_prefill(loads: Sequence[ReplicaLoad], prompt_tokens: int, context: int) -> ReplicaLoad | None:
    """The replica to prefill a prompt of `prompt_tokens` tokens whose final context is `context`."""
    best: ReplicaLoad | None = None
    best_key = (True, 0.0)
    for r in loads:
        if not r.accepting or r.role not in (Role.PREFILL, Role.MIXED):
            continue
        mixed = r.role is Role.MIXED
        if r.kv_capacity_tokens < (context if mixed else prompt_tokens):
            continue
        key = _mixed_key(r, prompt_tokens, context) if mixed else (False, r.kv_ready_s())
        if best is None or key < best_key:
            best, best_key = r, key
    return best


def _mixed_key(r: ReplicaLoad, prompt_tokens: int, context: int) -> tuple[bool, float]:
    """(no estimate of its slot wait, seconds until the prompt's first token) on a MIXED replica."""
    full = r.decode_sequences >= r.concurrency or r.kv_free_tokens < context
    if not full:
        return False, r.kv_ready_s()
    if r.decode_tok_s <= 0:  # the view has no decode rate: after every replica that can start it
        return True, r.kv_ready_s()
    ahead = r.decode_sequences - r.concurrency + 1  # slots to free before this prompt's
    return False, r.kv_ready_s() + ahead * max(1, context - prompt_tokens) / r.decode_tok_s


def pick_decoder(loads: Sequence[ReplicaLoad], context: int) -> ReplicaLoad | None:
    """The replica to decode a sequence whose final context is `context` tokens. If only a replica
    that is draining for a role switch could ever hold it, it goes there (the drain waits for it)
    rather than failing."""
    best: ReplicaLoad | None = None
    best_key = (True, True, 0.0, 0.0)
    for r in loads:
        if not r.decodes or r.concurrency <= 0 or r.kv_capacity_tokens < context:
            continue
        key = (not r.accepting, r.kv_free_tokens < context, r.decode_load, -r.decode_tok_s)
        if best is None or key < best_key:
            best, best_key = r, key
    return best


def admits(active: int, concurrency: int, kv_free_tokens: int, context: int) -> bool:
    """Whether the sequence at the head of a decoder's queue joins the batch now."""
    return active < concurrency and context <= kv_free_tokens

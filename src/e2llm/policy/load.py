"""`ReplicaLoad`: what the serving policy sees of one replica at one instant.

Every field is a counter or a rate both clocks have: the simulator reads them off its event state,
the runtime off its live counters (outstanding prompt tokens, sequences, KV tokens in use) and the
plan's rates. Token counts are contexts, not bytes: `kv_free_tokens` is the longest context whose
KV still fits on every stage of the replica next to what is already reserved, so "the request
fits" is one comparison whatever the stages' layer split or sliding windows.

A view is built for one decision: `latency_s` and `decode_tok_s` are for the request being routed.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.plan.types import Role

DECODE_ROLES = frozenset({Role.DECODER, Role.MIXED, Role.COLOCATED})


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    id: int
    role: Role  # what it does now (role switches and Splitwise's borrowing change it)
    accepting: bool = True  # False while it drains before a role switch (no new work is routed)
    home_role: Role | None = None  # Splitwise's mixed pool: the pool a borrowed replica returns to
    # prefill side
    queued_prompt_tokens: int = 0  # prompt tokens routed here and not yet prefilled (incl. running)
    prompts_waiting: int = 0  # prompts routed here that have not started
    prefill_tok_s: float = 0.0  # prompt tokens per second it prefills while busy (its capacity)
    latency_s: float = 0.0  # the prompt being routed: its own time through the idle replica
    handoff_s: float = 0.0  # ... and its KV's time to the nearest decoder on idle links
    transfer_backlog_s: float = 0.0  # seconds of KV hand-offs out of it still to go over its links
    # decode side
    decode_sequences: int = 0  # sequences routed here to decode and not finished (incl. in transit)
    concurrency: int = 1  # decode slots (a PREFILL replica: those it would have as a decoder)
    kv_free_tokens: int = 0  # longest context whose KV fits beside what is reserved now
    kv_capacity_tokens: int = 0  # longest context whose KV fits on the empty replica
    kv_used_share: float = 0.0  # share of its KV memory reserved, all devices together
    decode_tok_s: float = 0.0  # tokens/s of its full batch near the routed request's context

    @property
    def decodes(self) -> bool:
        return self.role in DECODE_ROLES

    @property
    def borrowed(self) -> bool:
        return self.home_role is not None

    def kv_ready_s(self) -> float:
        """Normalised prefill backlog: seconds until a prompt routed here now would have its KV at a
        decoder. Prefill and hand-off form a tandem queue: the prompt's prefill ends after the prompt
        tokens queued ahead of it (at the replica's rate) and its own latency; its KV leaves once
        that is done and the hand-offs already on the replica's links have gone; it arrives its own
        hand-off time later. A replica on a slow link piles up hand-offs, and this keeps prompts
        away from it. (Adding the two queues instead double-counts them, since they drain at the
        same time; counting the future hand-offs of the queued prompts as well steered prompts to a
        slower replica while the links were draining: on the Azure conv trace both waited 20-35%
        longer and ended 5-10% later.)"""
        queue = self.queued_prompt_tokens / self.prefill_tok_s if self.prefill_tok_s > 0 else 0.0
        return max(queue + self.latency_s, self.transfer_backlog_s) + self.handoff_s

    @property
    def decode_load(self) -> float:
        """Outstanding sequences per decode slot (above 1: sequences wait for a slot)."""
        return self.decode_sequences / self.concurrency if self.concurrency > 0 else float("inf")

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

PREFILL_ROLES = frozenset({Role.PREFILL, Role.MIXED, Role.COLOCATED})
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
    transfer_backlog_s: float = 0.0  # seconds of KV hand-offs out of it still to go over its links
    # decode side
    decode_sequences: int = 0  # sequences routed here to decode and not finished (incl. in transit)
    concurrency: int = 1  # decode slots (a PREFILL replica: those it would have as a decoder)
    kv_free_tokens: int = 0  # longest context whose KV fits beside what is reserved now
    kv_capacity_tokens: int = 0  # longest context whose KV fits on the empty replica
    decode_tok_s: float = 0.0  # tokens/s of its full batch near the routed request's context

    @property
    def prefills(self) -> bool:
        return self.role in PREFILL_ROLES

    @property
    def decodes(self) -> bool:
        return self.role in DECODE_ROLES

    @property
    def borrowed(self) -> bool:
        return self.home_role is not None

    @property
    def prefill_backlog_s(self) -> float:
        """Normalised prefill backlog: when a prompt routed here now would have its first token and
        its KV on the wire: the queue ahead of it at the replica's rate, its own time through the
        replica, and the KV hand-offs still queued on the replica's links."""
        queue = self.queued_prompt_tokens / self.prefill_tok_s if self.prefill_tok_s > 0 else 0.0
        return queue + self.latency_s + self.transfer_backlog_s

    @property
    def decode_load(self) -> float:
        """Outstanding sequences per decode slot (above 1: sequences wait for a slot)."""
        return self.decode_sequences / self.concurrency if self.concurrency > 0 else float("inf")

    @property
    def kv_used_share(self) -> float:
        """Share of the KV memory reserved (Splitwise's "memory in use"), 1 when it has none."""
        if self.kv_capacity_tokens <= 0:
            return 1.0
        return 1.0 - self.kv_free_tokens / self.kv_capacity_tokens

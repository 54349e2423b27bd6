"""A replica's load as the serving policy sees it (`policy.ReplicaLoad`), from live counters.

The runtime's side of the policy's interface, as `sim/replica.py` (`ReplicaSim.load`) is the
simulator's: the same fields from the wall-clock state. Counters (prompt tokens queued or being
prefilled, prompts waiting, sequences routed to its decode slots, KV reserved, hand-offs still on
its links) are the runner's; rates (prefill tok/s, the prompt's own latency, KV hand-off time,
full-batch decode tok/s) are its `Capacity` in the role it has now. A MIXED replica's prefill rate
is the share of its iteration budget the batch leaves to prompts, as in the simulator.
"""

from __future__ import annotations

from e2llm.plan.types import Role
from e2llm.policy.load import ReplicaLoad
from e2llm.runtime.batch import kv_free_tokens
from e2llm.runtime.replica import ReplicaRunner
from e2llm.sim.state import NO_KV_LIMIT


def replica_load(runner: ReplicaRunner, now: float, prompt_tokens: int = 0, context: int = 0) -> ReplicaLoad:
    """`runner`'s view for one decision: `prompt_tokens` of the prompt being routed (its latency
    and hand-off), `context` for the decode rate (0: not needed)."""
    cap, role, slots = runner.capacity, runner.role, runner.slots
    queued = runner.prefill_tokens_outstanding - slots.prefilled_tokens
    rate = cap.prefill_tok_s
    latency = 0.0
    if role is Role.PREFILL:
        latency = cap.prefill_latency_s(prompt_tokens) if prompt_tokens else 0.0
    elif role in (Role.MIXED, Role.COLOCATED):
        if role is Role.MIXED:  # the budget left beside the batch goes to prompts
            rate *= max(1, runner.chunk_tokens - len(slots.active)) / runner.chunk_tokens
        latency = prompt_tokens / rate if rate > 0 else 0.0
    budget = slots.kv_budget_tokens
    decoding = role is not Role.PREFILL
    reserved = slots.reserved + [g.max_context_len for g, _ in slots.waiting]
    capacity_tokens = NO_KV_LIMIT if budget is None else budget
    return ReplicaLoad(
        id=runner.replica.id,
        role=role,
        accepting=runner.accepting,
        home_role=runner.home_role,
        queued_prompt_tokens=queued,
        prompts_waiting=runner.prefill_waiting,
        prefill_tok_s=rate,
        latency_s=latency,
        handoff_s=prompt_tokens * cap.kv_s_per_token if role is Role.PREFILL else 0.0,
        transfer_backlog_s=runner.transfer_backlog_s(now),
        decode_sequences=runner.decode_sequences if decoding else 0,
        concurrency=slots.concurrency,
        kv_free_tokens=kv_free_tokens(budget, reserved) if decoding else capacity_tokens,
        kv_capacity_tokens=capacity_tokens,
        kv_used_share=sum(reserved) / budget if budget else 0.0,
        decode_tok_s=cap.decode_tok_s(context, slots.concurrency) if context else 0.0,
    )

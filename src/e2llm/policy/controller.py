"""The role controller: when e2llm moves a replica between PREFILL and DECODER at run time.

Roles planned offline from mean token counts cannot follow the workload actually served (the
method names this as its limitation): under overload one pool queues while the other idles.
Two normalised backlogs say which phase is short:

- prefill pressure = queued prompt tokens of the prefill pool / the pool's prefill rate, over
  the TTFT budget: above 1, a prompt arriving now waits longer than the budget for its first token;
- decode pressure = outstanding decode sequences (decoding, waiting for a slot or in transit)
  per decode slot, or the share of the pool's KV memory reserved, whichever is higher: above 1,
  sequences queue for a slot, because the slots are sized so every sequence keeps the
  per-request speed floor.

A decoder is moved to PREFILL when prefill pressure is at least `prefill_high` while decode
pressure is at most `decode_low`, and a PREFILL replica to DECODER in the mirror case. The gap
between each phase's high and low threshold is the hysteresis: the switch that relieves one phase
raises the other phase's pressure, but not past the point that would switch it back. Besides:
at most one switch in flight, each replica keeps a role at least `min_dwell_s`, and each pool
keeps at least one replica. The donor is the one that drains soonest.

Protocol (the caller runs it; both clocks do the same): stop routing to the replica
(`ReplicaLoad.accepting` false) -> wait until `drained` -> switch its role (weights stay resident,
only the scheduler's view changes) -> publish it (accepting again, in the new role).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from e2llm.plan.types import Role
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.settings import PolicySettings


@dataclass(frozen=True, slots=True)
class Switch:
    replica: int
    to: Role


@dataclass(frozen=True, slots=True)
class Pressure:
    prefill: float
    decode: float


def pressure(loads: Sequence[ReplicaLoad], ttft_budget_s: float) -> Pressure:
    """Both normalised backlogs over the replicas now in each phase (PREFILL/MIXED, DECODER/MIXED)."""
    tokens = rate = 0.0
    seqs = slots = used = capacity = 0.0
    for r in loads:
        if r.role in (Role.PREFILL, Role.MIXED):
            tokens += r.queued_prompt_tokens
            rate += r.prefill_tok_s
        if r.role in (Role.DECODER, Role.MIXED):
            seqs += r.decode_sequences
            slots += r.concurrency
            used += r.kv_capacity_tokens - r.kv_free_tokens
            capacity += r.kv_capacity_tokens
    prefill = tokens / rate / ttft_budget_s if rate > 0 else 0.0
    decode = max(seqs / slots if slots else 0.0, used / capacity if capacity > 0 else 0.0)
    return Pressure(prefill, decode)


def decide_switch(
    loads: Sequence[ReplicaLoad],
    settings: PolicySettings,
    now_s: float,
    last_switch_s: Mapping[int, float],
    in_flight: bool,
) -> Switch | None:
    """The switch to start now, if any. `last_switch_s`: when each replica last changed role
    (absent: never, so it has dwelt since the start)."""
    if in_flight:
        return None
    p = pressure(loads, settings.ttft_budget_s)

    def can_leave(r: ReplicaLoad, role: Role) -> bool:
        since = last_switch_s.get(r.id)
        return r.role is role and r.accepting and (since is None or now_s - since >= settings.min_dwell_s)

    if p.prefill >= settings.prefill_high and p.decode <= settings.decode_low:
        pool = [r for r in loads if r.role is Role.DECODER]
        donors = [r for r in pool if can_leave(r, Role.DECODER)]
        if len(pool) > 1 and donors:
            d = min(donors, key=lambda r: (r.decode_sequences, -r.prefill_tok_s))
            return Switch(d.id, Role.PREFILL)
    if p.decode >= settings.decode_high and p.prefill <= settings.prefill_low:
        pool = [r for r in loads if r.role is Role.PREFILL]
        donors = [r for r in pool if can_leave(r, Role.PREFILL) and r.concurrency > 0]
        if len(pool) > 1 and donors:
            d = min(donors, key=lambda r: (r.kv_ready_s(), -r.concurrency))
            return Switch(d.id, Role.DECODER)
    return None


def drained(load: ReplicaLoad) -> bool:
    """Whether a replica that stopped taking work has none left in its current role: no prompt
    queued or running and no KV still leaving (PREFILL), no sequence left (DECODER)."""
    if load.role is Role.PREFILL:
        return load.queued_prompt_tokens == 0 and load.transfer_backlog_s == 0.0
    return load.decode_sequences == 0 and load.queued_prompt_tokens == 0

"""The role controller: when e2llm moves a replica between PREFILL and DECODER at run time.

Roles planned offline from mean token counts cannot follow the workload actually served (the
method names this as its limitation): when the served shape drifts from the planned one, one
pool queues while the other idles. Two normalised backlogs say which phase is short:

- prefill pressure = queued prompt tokens of the prefill pool / the pool's prefill rate, over
  the TTFT budget: above 1, a prompt arriving now waits longer than the budget for its first token;
- decode pressure = outstanding decode sequences (decoding, waiting for a slot or in transit)
  per decode slot, or the share of the pool's KV memory reserved, whichever is higher: above 1,
  sequences queue for a slot, because the slots are sized so every sequence keeps the
  per-request speed floor.

A backlog alone does not say that moving a replica helps: under overload both pools are full
and the planned split is already the balanced one (moving one of two decoders to prefill, as a
threshold-only rule does, halved the decode capacity on the paper's custom workload and doubled
the waiting). So a switch must also raise the rate both pools sustain together for the demand
observed recently (`Demand`: mean prompt and output tokens): min(prefill pool rate / mean prompt,
decode pool rate / mean output), in requests per second, by at least `min_gain`. That is the
hysteresis, asymmetric by construction: a switch is taken when the short phase's backlog passes
its threshold (`prefill_high`, `decode_high`) and the gain passes `min_gain`; the reverse switch
would lose that gain, so it never follows unless the demand's shape moves by more than the margin.
Besides: at most one switch in flight, each replica keeps a role at least `min_dwell_s`, each pool
keeps at least one replica, and a PREFILL replica moves only if it can decode (`concurrency` > 0).
Of several candidates the one with the largest gain moves, then the one that drains soonest.

Protocol (the caller runs it; both clocks do the same): stop routing to the replica
(`ReplicaLoad.accepting` false) -> wait until `drained` -> switch its role (weights stay resident,
only the scheduler's view changes) -> publish it (accepting again, in the new role).
The loads must be built for the demand's typical context (`decode_tok_s` at mean prompt + half
the mean output), so that every replica's rate in either role is in the same units.
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


@dataclass(frozen=True, slots=True)
class Demand:
    """The recent requests' shape (mean tokens per request)."""

    mean_input_tokens: float
    mean_output_tokens: float


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


def sustained_rps(loads: Sequence[ReplicaLoad], demand: Demand, moved: ReplicaLoad | None = None) -> float:
    """Requests per second the PREFILL and DECODER pools sustain together for `demand` (the slower
    pool's rate), with `moved` counted in the other pool."""
    prefill = decode = 0.0
    for r in loads:
        role = r.role
        if r is moved:
            role = Role.DECODER if role is Role.PREFILL else Role.PREFILL
        if role is Role.PREFILL:
            prefill += r.prefill_tok_s / max(demand.mean_input_tokens, 1.0)
        elif role is Role.DECODER:
            decode += r.decode_tok_s / max(demand.mean_output_tokens, 1.0)
    return min(prefill, decode)


def decide_switch(
    loads: Sequence[ReplicaLoad],
    settings: PolicySettings,
    demand: Demand,
    now_s: float,
    last_switch_s: Mapping[int, float],
    in_flight: bool,
) -> Switch | None:
    """The switch to start now, if any. `last_switch_s`: when each replica last changed role
    (absent: never, so it has dwelt since the start)."""
    if in_flight:
        return None
    p = pressure(loads, settings.ttft_budget_s)
    if p.prefill >= settings.prefill_high:
        short, donor_role = Role.PREFILL, Role.DECODER
    elif p.decode >= settings.decode_high:
        short, donor_role = Role.DECODER, Role.PREFILL
    else:
        return None
    pool = [r for r in loads if r.role is donor_role]
    if len(pool) < 2:
        return None
    now_rps = sustained_rps(loads, demand)
    best: tuple[float, float, ReplicaLoad] | None = None
    for r in pool:
        since = last_switch_s.get(r.id)
        if not r.accepting or (since is not None and now_s - since < settings.min_dwell_s):
            continue
        if short is Role.DECODER and r.concurrency <= 0:
            continue
        gain = sustained_rps(loads, demand, moved=r)
        drain = r.decode_sequences if donor_role is Role.DECODER else r.kv_ready_s()
        if gain < now_rps * (1 + settings.min_gain):
            continue
        if best is None or (-gain, drain) < (-best[0], best[1]):
            best = (gain, drain, r)
    return None if best is None else Switch(best[2].id, short)


def drained(load: ReplicaLoad) -> bool:
    """Whether a replica that stopped taking work has none left in its current role: no prompt
    queued or running and no KV still leaving (PREFILL), no sequence left (DECODER)."""
    if load.role is Role.PREFILL:
        return load.queued_prompt_tokens == 0 and load.transfer_backlog_s == 0.0
    return load.decode_sequences == 0 and load.queued_prompt_tokens == 0

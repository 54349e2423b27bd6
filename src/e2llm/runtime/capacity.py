"""What each replica of a served plan can do in either role: the rates the serving policy weighs.

The policy's views (`policy.ReplicaLoad`) need, besides the live counters, a replica's prefill
rate, its decode slots and full-batch decode rate, a prompt's own latency through it and its KV
hand-off time, in its current role *and* in the one a role switch would give it (a plan states
only the former). They come from the cost model of the plan's embedded cluster and model, with
the simulator's own formulas (`sim.state`, `sim.replica.decode_slots`), so the runtime weighs the
numbers its prediction was made with. A hand-written plan embeds no cluster: then the plan's own
rates stand in, and a replica has none in a role it was not planned for (so the role controller
never finds moving it worth while).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from e2llm.cost.build import build_cost_model
from e2llm.cost.model import CostModel
from e2llm.plan.role_scoring import DecodeChoice, ReplicaRates, RoleAssignment
from e2llm.plan.roles import assign_roles
from e2llm.plan.types import Objective, Plan, Replica
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.sim.prefill import NOMINAL_PROMPT_TOKENS
from e2llm.sim.replica import decode_slots
from e2llm.sim.state import decode_batches, decode_step, kv_s_per_token, prefill_estimate

CONTEXT_BUCKET = 64  # contexts are rounded to this for the decode-rate estimate (cached)


@dataclass(eq=False)
class Capacity:
    """One replica's rates in either role (see the module docstring)."""

    replica: Replica
    prefill_tok_s: float  # prompt tokens per second it sustains while prefilling (pipelined)
    decode_slots: int  # its decode batch: the plan's concurrency, or what it would run as a decoder
    kv_s_per_token: float = 0.0  # KV hand-off seconds per prompt token to its nearest decoder
    cost: CostModel | None = None
    _latency: dict[int, float] = field(default_factory=dict, repr=False)
    _step: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)

    def prefill_latency_s(self, tokens: int) -> float:
        """One prompt's time through the idle pipeline (all stages and hops)."""
        if self.cost is None:
            return tokens / self.prefill_tok_s if self.prefill_tok_s > 0 else 0.0
        got = self._latency.get(tokens)
        if got is None:
            got = self._latency[tokens] = prefill_estimate(self.cost, self.replica.stages, tokens)[1]
        return got

    def decode_tok_s(self, context: int, slots: int | None = None) -> float:
        """Tokens per second its full decode batch (`slots`, default `decode_slots`) generates at
        about `context` tokens of context."""
        c = self.decode_slots if slots is None else slots
        if c <= 0:
            return 0.0
        if self.cost is None:
            per_request = self.replica.decode_tok_s_per_request
            return c * per_request if per_request else 0.0
        key = (c, CONTEXT_BUCKET * max(1, round(context / CONTEXT_BUCKET)))
        got = self._step.get(key)
        if got is None:
            got = self._step[key] = decode_step(self.cost, self.replica.stages, *key)[0]
        return c / got


def plan_cost_model(plan: Plan) -> CostModel | None:
    """The cost model of the plan's embedded cluster and model (None for a hand-written plan)."""
    if plan.cluster is None or plan.model_spec is None:
        return None
    return build_cost_model(plan.model_spec, plan.cluster)


def plan_capacities(plan: Plan, cost: CostModel | None = None) -> dict[int, Capacity]:
    """Each replica's `Capacity`, by replica id. A replica the plan does not make a decoder gets
    the batch the simulator gives it (`decode_slots`): Splitwise plans size it by memory alone,
    as Splitwise does; e2llm's keep the workload's per-request speed floor."""
    cost = cost if cost is not None else plan_cost_model(plan)
    if cost is None:
        return {r.id: from_plan(r) for r in plan.replicas}
    shape = plan.workload
    context = (
        int(shape.kv_context_tokens or shape.mean_input_tokens + shape.mean_output_tokens) if shape else 1
    )
    floor = 0.0 if plan.scheduler == "splitwise" or shape is None else shape.min_decode_tok_s
    decoders = [r for r in plan.replicas if r.does_decode]
    out = {}
    for r in plan.replicas:
        bottleneck = prefill_estimate(cost, r.stages, NOMINAL_PROMPT_TOKENS)[0]
        nominal = NOMINAL_PROMPT_TOKENS / bottleneck if bottleneck > 0 else 0.0
        out[r.id] = Capacity(
            replica=r,
            prefill_tok_s=r.prefill_capacity_tok_s or nominal,
            decode_slots=decode_slots(cost, r, context, floor),
            kv_s_per_token=kv_s_per_token(cost, r, decoders),
            cost=cost,
        )
    return out


def role_rates(cap: Capacity, shape: WorkloadShape) -> ReplicaRates | None:
    """What the replica sustains in each role for `shape`, with its layers where they are (the
    planner's `ReplicaRates`: a role assignment over the groups already running). None without a
    cost model."""
    if cap.cost is None:
        return None
    mean_in, mean_out = max(1, round(shape.mean_input_tokens)), max(1.0, shape.mean_output_tokens)
    kv_context = int(shape.kv_context_tokens or mean_in + mean_out)
    context = round(mean_in + mean_out / 2)
    choices = tuple(
        DecodeChoice(c, c / step / mean_out, mean_out * step)
        for c, step in decode_batches(cap.cost, cap.replica, kv_context, context, shape.min_decode_tok_s)
    )
    bottleneck, latency = prefill_estimate(cap.cost, cap.replica.stages, mean_in)
    return ReplicaRates(1.0 / bottleneck if bottleneck > 0 else 0.0, latency, choices)


def best_roles(
    capacities: Sequence[Capacity], shape: WorkloadShape, objective: Objective
) -> RoleAssignment | None:
    """The planner's role and concurrency choice (`plan.roles.assign_roles`) over these replicas,
    their groups and layers as they are, for `shape`; None if it has none (no cost model, or no
    split with a prefill and a decode replica)."""
    rates = [role_rates(c, shape) for c in capacities]
    if any(r is None for r in rates):
        return None
    return assign_roles([r for r in rates if r is not None], shape.interval_s, objective.value)


def from_plan(r: Replica) -> Capacity:
    """The plan's own rates (no cost model): what it states for the role it was planned for."""
    return Capacity(r, r.prefill_capacity_tok_s or r.prefill_tok_s or 1.0, r.concurrency)

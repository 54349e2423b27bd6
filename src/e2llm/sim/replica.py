"""One plan replica while the simulation runs: its role now, its PREFILL pipeline and its decode
engine (one of them works at a time: they share the devices), and its load as the policy sees it.

Roles change at run time in two ways, both of which keep the weights where they are:
- e2llm's role controller (policy/controller.py) moves a replica between PREFILL and DECODER:
  it stops taking work, drains (prompts prefilled and their KV sent / sequences decoded to the
  end), then works in the new role;
- Splitwise's mixed pool (policy/mixed_pool.py) borrows a replica into COLOCATED work at once;
  a borrowed PREFILL replica first finishes the prompts its pipeline holds (prompts go first in
  Splitwise's mixed batching anyway), and the replica returns to its pool when idle.

A replica that did not decode in the plan decodes, after a switch or while borrowed, with
`decode_slots(...)` sequences: the largest batch (up to the planner's 16) whose KV at the
workload's budgeted context fits and whose per-request speed keeps the floor.
"""

from __future__ import annotations

from collections.abc import Callable

from e2llm.cost.model import CostModel
from e2llm.plan.types import Replica, Role
from e2llm.policy.load import ReplicaLoad
from e2llm.sim.decode import DecodeEngine, Mode, OnPrefilled
from e2llm.sim.engine import Event
from e2llm.sim.execution import IDEAL, Execution
from e2llm.sim.network import Network
from e2llm.sim.prefill import PrefillDone, PrefillPipeline
from e2llm.sim.state import BusyLog, Job, KvSizer, decode_batches, kv_s_per_token

_MODE = {
    Role.DECODER: Mode.DECODE,
    Role.PREFILL: Mode.DECODE,
    Role.COLOCATED: Mode.PROMPTS_FIRST,
    Role.MIXED: Mode.CHUNKED,
}

OnIdle = Callable[[float, "ReplicaSim"], list[Event]]


def decode_slots(
    cost: CostModel, replica: Replica, context: int, min_decode_tok_s: float, execution: Execution = IDEAL
) -> int:
    """Decode batch of a replica the plan did not make a decoder (0: it cannot hold one sequence
    of `context` tokens, or is too slow for the floor even alone)."""
    if replica.does_decode:
        return replica.concurrency
    batches = decode_batches(cost, replica, context, context, min_decode_tok_s, execution.step_barrier)
    return batches[-1][0] if batches else 0


class ReplicaSim:
    def __init__(
        self,
        replica: Replica,
        cost: CostModel,
        net: Network,
        busy: BusyLog,
        *,
        slots: int,
        chunk_tokens: int,
        on_prefill_done: PrefillDone,
        on_prefilled: OnPrefilled,
        on_idle: OnIdle,
        execution: Execution = IDEAL,
    ) -> None:
        self.replica = replica
        self.id = replica.id
        self.role = replica.role
        self.home_role: Role | None = None  # borrowed into Splitwise's mixed pool from this pool
        self.accepting = True
        self.switch_to: Role | None = None  # draining for a switch to this role
        self._on_idle = on_idle
        self.pipe = (
            PrefillPipeline(replica, cost, net, busy, on_prefill_done, self._idle)
            if replica.role in (Role.PREFILL, Role.DECODER)
            else None
        )
        self.engine = (
            DecodeEngine(
                replica,
                cost,
                busy,
                concurrency=slots,
                mode=_MODE[replica.role],
                chunk_tokens=chunk_tokens,
                on_prefilled=on_prefilled,
                on_idle=self._idle,
                execution=execution,
            )
            if slots > 0
            else None
        )
        self.kv = self.engine.kv if self.engine else KvSizer(cost, replica)
        self.kv_out = 0  # KV hand-offs from this replica still on the wire
        self._wire_free_s: dict[tuple[str, str], float] = {}  # per outgoing link: when it is clear
        self._wire_until_s = 0.0
        self.kv_s_per_token = 0.0  # KV hand-off seconds per prompt token to its nearest decoder

    # --- the policy's view ----------------------------------------------------------------------
    def load(self, now: float, prompt_tokens: int = 0, context: int = 0) -> ReplicaLoad:
        pipe, engine = self.pipe, self.engine
        if self.role is Role.PREFILL and pipe is not None:
            queued, waiting, rate = pipe.pending_tokens, pipe.prompts_waiting, pipe.rate_tok_s
            latency = pipe.estimate(prompt_tokens)[1] if prompt_tokens else 0.0
        elif engine is not None and self.role in (Role.MIXED, Role.COLOCATED):
            queued, waiting = engine.queued_prompt_tokens, engine.prompts_waiting
            rate = self.nominal_prefill_tok_s
            if self.role is Role.MIXED:  # the budget left beside the batch goes to prompts
                rate *= max(1, engine.chunk_tokens - len(engine.active)) / engine.chunk_tokens
            latency = prompt_tokens / rate if rate > 0 else 0.0
        else:
            queued, waiting, rate, latency = 0, 0, self.nominal_prefill_tok_s, 0.0
        decoding = engine is not None and self.role is not Role.PREFILL
        return ReplicaLoad(
            id=self.id,
            role=self.role,
            accepting=self.accepting,
            home_role=self.home_role,
            queued_prompt_tokens=queued,
            prompts_waiting=waiting,
            prefill_tok_s=rate,
            latency_s=latency,
            handoff_s=prompt_tokens * self.kv_s_per_token if self.role is Role.PREFILL else 0.0,
            transfer_backlog_s=max(0.0, self._wire_until_s - now) if self.kv_out else 0.0,
            decode_sequences=engine.assigned if decoding and engine else 0,
            concurrency=engine.concurrency if engine else 0,
            kv_free_tokens=engine.kv_free_tokens if decoding and engine else self.kv.capacity_tokens,
            kv_capacity_tokens=self.kv.capacity_tokens,
            kv_used_share=engine.kv_used_share if decoding and engine else 0.0,
            decode_tok_s=engine.capacity_tok_s(context) if engine and context else 0.0,
        )

    @property
    def nominal_prefill_tok_s(self) -> float:
        if self.pipe is not None:
            return self.pipe.nominal_tok_s
        return self.replica.prefill_capacity_tok_s or 0.0

    # --- work -----------------------------------------------------------------------------------
    def submit_prompt(self, now: float, job: Job) -> list[Event]:
        if self.role is Role.PREFILL:
            assert self.pipe is not None
            return self.pipe.submit(now, job)
        assert self.engine is not None
        self.engine.route(job, prompt=True)
        return self.engine.arrive(now, job)

    def kv_leaving(self, now: float, parts: list[tuple[str, str, float]]) -> None:
        """A hand-off of these (from device, to device, seconds on an idle link) parts starts."""
        self.kv_out += 1
        for a, b, seconds in parts:
            t = max(now, self._wire_free_s.get((a, b), 0.0)) + seconds
            self._wire_free_s[(a, b)] = t
            self._wire_until_s = max(self._wire_until_s, t)

    def kv_left(self, now: float) -> list[Event]:
        self.kv_out -= 1
        return self._idle(now)

    def set_kv_probe(self, decoders: list[ReplicaSim], cost: CostModel) -> None:
        """KV hand-off seconds per prompt token to the decoder it reaches fastest (links idle)."""
        self.kv_s_per_token = kv_s_per_token(cost, self.replica, [d.replica for d in decoders])

    # --- roles ------------------------------------------------------------------------------------
    def become(self, role: Role, home: Role | None = None) -> None:
        """Work in `role` from now on (weights resident: only what the replica runs changes)."""
        self.role, self.home_role = role, home
        engine = self.engine
        if engine is not None:
            engine.mode = _MODE[role]
            if role is not Role.PREFILL and self.pipe is not None and self.pipe.pending_tokens:
                engine.hold = True  # the pipeline's prompts finish first (released when it is idle)

    def _idle(self, now: float) -> list[Event]:
        out: list[Event] = []
        engine = self.engine
        if engine is not None and engine.hold and self.pipe is not None and self.pipe.pending_tokens == 0:
            out += engine.release(now)
        return out + self._on_idle(now, self)

"""Request routing across replicas, as the simulator does it (`e2llm.sim.router`).

`jsq` (join the shortest queue, the default): a prompt goes to the prefill-capable replica with
the smallest estimated wait, its outstanding prompt tokens (this one included) over its planned
prefill speed; a prefilled sequence goes to the decoder with the fewest outstanding sequences
(waiting for a slot, receiving KV or decoding) per decode slot. `splitwise` follows Splitwise's
scheduler: fewest pending prompt tokens, then the least KV in use (as a share of the decoder's
KV budget where it has one). A sequence prefilled on a COLOCATED replica stays there for decoding
(its KV is already in place). Ties go to the replica listed first in the plan. Lost replicas
(`ReplicaRunner.alive` false) are skipped; with none left for a phase, `NoLiveReplica`.

The choices are pure functions (`choose_prefill`, `choose_decoder`) of a typed view of each
candidate's load, so that one serving policy can make them for the simulator and the runtime
alike; `Router` only builds the views from the live runners and maps a choice back. It reads
each replica's role when it routes, so a replica whose role changes is routed by its new role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from e2llm.plan.types import Role
from e2llm.runtime.replica import ReplicaRunner


class NoLiveReplica(Exception):
    """Every replica that could serve a phase is lost."""


@dataclass(frozen=True, slots=True)
class PrefillLoad:
    tokens_outstanding: int  # prompt tokens queued or being prefilled
    capacity_tok_s: float  # planned prefill speed


@dataclass(frozen=True, slots=True)
class DecodeLoad:
    sequences: int  # waiting for a slot, receiving KV or decoding
    concurrency: int  # planned decode slots
    kv_tokens_in_use: int
    kv_budget_tokens: int | None


def choose_prefill(loads: Sequence[PrefillLoad], prompt_tokens: int, scheduler: str) -> int:
    """Index of the replica to prefill a prompt of `prompt_tokens` (the first of equals)."""

    def wait(load: PrefillLoad) -> float:
        pending = load.tokens_outstanding + prompt_tokens
        return pending if scheduler == "splitwise" else pending / load.capacity_tok_s

    return min(range(len(loads)), key=lambda i: wait(loads[i]))


def choose_decoder(loads: Sequence[DecodeLoad], scheduler: str) -> int:
    """Index of the decoder to take a prefilled sequence (the first of equals)."""

    def load(d: DecodeLoad) -> float:
        if scheduler == "splitwise":
            return d.kv_tokens_in_use / (d.kv_budget_tokens or 1)
        return d.sequences / d.concurrency

    return min(range(len(loads)), key=lambda i: load(loads[i]))


class Router:
    def __init__(self, runners: Sequence[ReplicaRunner], scheduler: str = "jsq"):
        self.runners = list(runners)
        self.scheduler = scheduler
        if not self.prefillers or not self.decoders:
            raise ValueError("a plan needs at least one replica that prefills and one that decodes")

    @property
    def prefillers(self) -> list[ReplicaRunner]:
        return [r for r in self.runners if r.replica.does_prefill]

    @property
    def decoders(self) -> list[ReplicaRunner]:
        """The DECODER replicas; where there are none, every replica that decodes."""
        decoders = [r for r in self.runners if r.replica.role == Role.DECODER]
        return decoders or [r for r in self.runners if r.replica.does_decode]

    def unavailable_reason(self) -> str | None:
        """Why no request can be served now (a phase without a live replica), or None."""
        for phase, runners in (("prefill", self.prefillers), ("decode", self.decoders)):
            if not any(r.alive for r in runners):
                return f"no live replica can {phase}"
        return None

    def pick_prefill(self, prompt_tokens: int) -> ReplicaRunner:
        live = [r for r in self.prefillers if r.alive]
        if not live:
            raise NoLiveReplica("no live replica can prefill")
        loads = [PrefillLoad(r.prefill_tokens_outstanding, r.prefill_capacity_tok_s) for r in live]
        return live[choose_prefill(loads, prompt_tokens, self.scheduler)]

    def pick_decoder(self, prefilled_on: ReplicaRunner) -> ReplicaRunner:
        if prefilled_on.replica.role == Role.COLOCATED:
            return prefilled_on
        live = [r for r in self.decoders if r.alive]
        if not live:
            raise NoLiveReplica("no live replica can decode")
        loads = [
            DecodeLoad(r.decode_sequences, r.replica.concurrency, r.kv_tokens_in_use, r.kv_budget_tokens)
            for r in live
        ]
        return live[choose_decoder(loads, self.scheduler)]

"""Request routing across replicas, as the simulator does it (`e2llm.sim.router`).

`jsq` (join the shortest queue, the default): a prompt goes to the prefill-capable replica with
the smallest estimated wait, its outstanding prompt tokens (this one included) over its planned
prefill speed; a prefilled sequence goes to the decoder with the fewest outstanding sequences
(waiting for a slot, receiving KV or decoding) per decode slot. `splitwise` follows Splitwise's
scheduler: fewest pending prompt tokens, then the least KV in use (as a share of the decoder's
KV budget where it has one). A sequence prefilled on a COLOCATED replica stays there for decoding
(its KV is already in place). Ties go to the replica listed first in the plan. Lost replicas
(`ReplicaRunner.alive` false) are skipped; with none left for a phase, `NoLiveReplica`.
"""

from __future__ import annotations

from collections.abc import Sequence

from e2llm.plan.types import Role
from e2llm.runtime.replica import ReplicaRunner


class NoLiveReplica(Exception):
    """Every replica that could serve a phase is lost."""


class Router:
    def __init__(self, runners: Sequence[ReplicaRunner], scheduler: str = "jsq"):
        self.prefillers = [r for r in runners if r.replica.does_prefill]
        decoders = [r for r in runners if r.replica.role == Role.DECODER]
        self.decoders = decoders or [r for r in runners if r.replica.does_decode]
        if not self.prefillers or not self.decoders:
            raise ValueError("a plan needs at least one replica that prefills and one that decodes")
        self.scheduler = scheduler

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

        def load(r: ReplicaRunner) -> float:
            pending = r.prefill_tokens_outstanding + prompt_tokens
            return pending if self.scheduler == "splitwise" else pending / r.prefill_capacity_tok_s

        return min(live, key=load)  # min keeps the first of equals

    def pick_decoder(self, prefilled_on: ReplicaRunner) -> ReplicaRunner:
        if prefilled_on.replica.role == Role.COLOCATED:
            return prefilled_on
        live = [r for r in self.decoders if r.alive]
        if not live:
            raise NoLiveReplica("no live replica can decode")

        def load(r: ReplicaRunner) -> float:
            if self.scheduler == "splitwise":
                return r.kv_tokens_in_use / (r.kv_budget_tokens or 1)
            return r.decode_sequences / r.replica.concurrency

        return min(live, key=load)

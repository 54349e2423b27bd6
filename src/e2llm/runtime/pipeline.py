"""Calls through one replica's stage actors, in pipeline order.

Each actor's output ObjectRef is handed to the next actor, so hidden states move actor to actor
without passing through the serving loop; the stage with the LM head samples, so only token ids
come back. A decode step splits the batch into micro-batches, one per stage at most, all in
flight together: while stage 2 runs micro-batch 1, stage 1 runs micro-batch 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from e2llm.runtime.generation import Generation


def prefill_call(actors: Sequence[Any], gen: Generation) -> Any:
    """Submit the prefill of `gen`'s context (the prompt, plus the tokens so far when it migrates)
    through every stage; returns the ObjectRef of its next token (`Picked`, one row)."""
    ref: Any = np.asarray(gen.context_ids, dtype=np.int64)
    last = len(actors) - 1
    for i, actor in enumerate(actors):
        ref = actor.prefill.remote(gen.seq_id, ref, gen.draw() if i == last else None)
    return ref


def decode_call(actors: Sequence[Any], group: Sequence[Generation]) -> Any:
    """Submit one decode step of `group` through every stage; returns the ObjectRef of its tokens
    (`Picked`, a row per sequence)."""
    ids = [g.seq_id for g in group]
    ref: Any = np.asarray([g.generated[-1] for g in group], dtype=np.int64)
    last = len(actors) - 1
    for i, actor in enumerate(actors):
        ref = actor.decode.remote(ids, ref, [g.draw() for g in group] if i == last else None)
    return ref


def free_call(actors: Sequence[Any], seq_ids: list[str]) -> None:
    """Drop these sequences' KV on every stage (fire and forget: calls from one caller to an
    actor run in order, so a later import or prefill on it never overtakes the free)."""
    if seq_ids:
        for actor in actors:
            actor.free.remote(seq_ids)


def split_batch(batch: list[Generation], n_stages: int) -> list[list[Generation]]:
    """The decode batch as micro-batches, one per stage at most, all in flight in one step, so no
    device idles for a whole step. Every sequence still advances exactly one token per step."""
    n = max(1, min(n_stages, len(batch)))
    size, extra = divmod(len(batch), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(batch[start:end])
        start = end
    return groups

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


Piece = tuple[Generation, int, int]  # a prompt chunk: (sequence, first context position, tokens)


def mixed_call(actors: Sequence[Any], group: Sequence[Generation], pieces: Sequence[Piece]) -> Any:
    """Submit one MIXED micro-batch through every stage: a decode step of `group` plus the
    prompt `pieces`; returns the ObjectRef of (the group's tokens (`Picked`), each piece's first
    token (`Picked`, one row), None unless the piece ends its prompt)."""
    ids = [g.seq_id for g in group]
    tokens = np.asarray([g.generated[-1] for g in group], dtype=np.int64) if group else None
    ref: Any = (tokens, [np.asarray(g.context_ids[a : a + n], dtype=np.int64) for g, a, n in pieces])
    chunk_ids = [g.seq_id for g, _, _ in pieces]
    ends = [g.draw() if a + n == len(g.context_ids) else None for g, a, n in pieces]
    last = len(actors) - 1
    for i, actor in enumerate(actors):
        final = i == last
        draws = [g.draw() for g in group] if final else None
        ref = actor.mixed.remote(ids, ref, draws, chunk_ids, ends if final else None)
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


def split_pieces(pieces: Sequence[Piece], n: int) -> list[list[Piece]]:
    """The iteration's prompt pieces over `n` micro-batches, about equal tokens each, in order (a
    piece may be cut in two: the halves run in order on every stage, as one caller's calls to an
    actor do)."""
    total = sum(p[2] for p in pieces)
    n = max(1, min(n, total))
    out: list[list[Piece]] = [[] for _ in range(n)]
    size, extra = divmod(total, n)
    k, room = 0, size + (1 if extra else 0)
    for gen, start, tokens in pieces:
        while tokens:
            take = min(tokens, room)
            out[k].append((gen, start, take))
            start, tokens, room = start + take, tokens - take, room - take
            if not room and k + 1 < n:
                k += 1
                room = size + (1 if k < extra else 0)
    return out

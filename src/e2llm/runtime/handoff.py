"""The PD hand-off: a prompt's KV moves from a PREFILL replica to a decoder replica.

The two replicas may split the layers differently: each decoder stage receives the intersection
of its layer range with every prefill stage's range (`kv_routes`), straight from those actors
(ObjectRefs passed actor to actor; the serving loop never holds the KV). Once the decoder has it,
the prefill replica releases the sequence, which frees its hold for the next prompt; the decoder
does not wait for that sequence to finish decoding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from e2llm.plan.types import Stage
from e2llm.runtime.generation import Generation
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.replica import ReplicaRunner


def kv_routes(src: Sequence[Stage], dst: Sequence[Stage]) -> list[list[tuple[int, int, int]]]:
    """For each destination stage: the (source stage index, start, end) pieces whose layers it
    owns. Pieces are the non-empty intersections of half-open ranges, in layer order."""
    routes = []
    for d in dst:
        pieces = []
        for i, s in enumerate(src):
            start, end = max(s.start, d.start), min(s.end, d.end)
            if start < end:
                pieces.append((i, start, end))
        routes.append(pieces)
    return routes


async def hand_off(gen: Generation, src: ReplicaRunner, dst: ReplicaRunner, metrics: ServingMetrics) -> None:
    """Move `gen`'s prompt KV from prefill replica `src` to decoder `dst`, then release it on
    `src`. On failure the caller releases it on both (`ReplicaRunner.release`)."""
    t0 = time.monotonic()
    length = gen.context_len - 1  # the last token (from the prefill) is not in the KV yet
    imports = []
    for j, pieces in enumerate(kv_routes(src.replica.stages, dst.replica.stages)):
        parts = [src.actors[i].export_kv.remote(gen.seq_id, start, end) for i, start, end in pieces]
        imports.append(dst.actors[j].import_kv.remote(gen.seq_id, length, *parts))
    src.kv_leaving(length)
    try:
        received = sum(await asyncio.gather(*imports))
    finally:
        src.kv_left()
    src.release(gen)
    gen.handoff_s, gen.handoff_bytes = time.monotonic() - t0, received
    metrics.kv_moved(src.label, dst.label, received, gen.handoff_s)

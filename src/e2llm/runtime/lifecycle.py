"""One request's life: route to a prefill replica, prefill (first token), route to a decoder,
hand the KV over (unless co-located), decode to the end; migrate it when a replica is lost.

Every exit, whatever the path (finished, cancelled while queued, a stage error, a lost replica,
no live replica, shutdown), goes through one `finally` that releases the request on both the
replicas it used (`ReplicaRunner.release` is idempotent) and records it in the metrics once.

Device loss: a lost replica raises `ReplicaLost` here; the request is re-prefilled, prompt plus
the tokens generated so far, on a live replica, at most `MAX_MIGRATIONS` times; the stream goes
on from the next token, so nothing is repeated or skipped. A request that cannot be placed (no
live replica of a needed role, or out of migrations) fails with an explicit error (HTTP 503 / an
SSE error event); none is dropped silently.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from e2llm.runtime.drift import WorkloadWindow
from e2llm.runtime.events import EventKind
from e2llm.runtime.fleet import Fleet
from e2llm.runtime.generation import Generation
from e2llm.runtime.handoff import hand_off
from e2llm.runtime.loss import Evicted, ReplicaLost, is_actor_loss
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.router import NoLiveReplica

log = logging.getLogger(__name__)

MAX_MIGRATIONS = 2  # re-prefills of one request after replica losses, before it fails


class RequestLifecycle:
    """Serves requests on whatever replicas the fleet routes to at the time."""

    def __init__(self, fleet: Fleet, metrics: ServingMetrics, window: WorkloadWindow | None = None):
        self.fleet = fleet
        self.metrics = metrics
        self.window = window  # the live workload: each arrival, and each finished request
        self.migrations = 0  # requests moved to another replica after a loss
        self._tasks: dict[asyncio.Task[None], Generation] = {}

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, gen: Generation) -> None:
        """Start serving `gen` in the background; results arrive on `gen.events`."""
        if self.window is not None:
            self.window.arrive(time.monotonic(), len(gen.prompt_ids))
        task = asyncio.get_running_loop().create_task(self._serve(gen))
        self._tasks[task] = gen
        task.add_done_callback(self._tasks.pop)

    def fail_all(self, message: str, status: int = 503) -> int:
        """End every request in flight with an explicit error (shutting down); returns how many.
        Each still leaves its replicas through the usual path, which frees its KV."""
        gens = [g for g in self._tasks.values() if not g.done]
        for gen in gens:
            gen.fail(message, status)
        return len(gens)

    def cancel_all(self) -> None:
        """Shutting down: stop every request (each still releases its KV on the way out)."""
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, gen: Generation) -> None:
        try:
            while True:
                try:
                    await self._serve_once(gen)
                    return
                except ReplicaLost as e:
                    if gen.done:
                        return
                    evicted = isinstance(e, Evicted)  # moved for a role switch: not a loss
                    if gen.migrations >= MAX_MIGRATIONS and not evicted:
                        log.warning("request %s failed: %s; no migrations left", gen.seq_id, e)
                        gen.fail(f"generation failed: its replica was lost {MAX_MIGRATIONS + 1} times", 503)
                        return
                    gen.migrations += 0 if evicted else 1
                    self.migrations += 1
                    count = "" if evicted else f"migration {gen.migrations}/{MAX_MIGRATIONS}, "
                    text = (
                        f"request {gen.seq_id} migrates after {e} ({count}"
                        f"{len(gen.generated)} tokens generated so far)"
                    )
                    log.info("%s", text)
                    self.metrics.record_event(EventKind.MIGRATION, text)
        except NoLiveReplica as e:
            log.warning("request %s failed: %s", gen.seq_id, e)
            gen.fail(f"generation failed: {e}", 503)
        finally:
            self.metrics.request_finished(gen)
            if self.window is not None and gen.finish_reason in ("stop", "length"):
                self.window.finish(time.monotonic(), len(gen.prompt_ids), len(gen.generated))

    async def _serve_once(self, gen: Generation) -> None:
        """Serve `gen` (from its current context) on one prefill and one decode replica. A lost
        actor becomes `ReplicaLost`; any other stage error fails this request only."""
        router = self.fleet.router
        prefiller = router.pick_prefill(len(gen.context_ids), gen.max_context_len)
        decoder: ReplicaRunner | None = None
        try:
            first = await prefiller.prefill(gen)
            if first is None:  # the client left while queued
                return
            gen.add_token(*first)
            if gen.done:
                return
            typical = len(gen.prompt_ids) + gen.max_tokens // 2
            decoder = router.pick_decoder(prefiller, gen.max_context_len, typical)
            install = (
                None
                if decoder is prefiller
                else functools.partial(hand_off, gen, prefiller, decoder, self.metrics)
            )
            await decoder.join(gen, install)
        except (ReplicaLost, NoLiveReplica):
            raise
        except Exception as e:
            if is_actor_loss(e):
                raise self.fleet.lost(e, [r for r in (prefiller, decoder) if r is not None]) from e
            where = (
                prefiller.label if decoder in (None, prefiller) else f"{prefiller.label} -> {decoder.label}"
            )
            log.error("request %s failed on replica %s", gen.seq_id, where, exc_info=e)
            gen.fail(f"generation failed on replica {where}")  # a 500: the client sees no detail
        finally:
            prefiller.release(gen)
            router.settle(prefiller)
            if decoder is not None:
                decoder.release(gen)
                router.settle(decoder)

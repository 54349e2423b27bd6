"""Driver-side replicas: prefill through the stage actors, and continuous-batching decode.

A `ReplicaRunner` holds one plan replica's stage actors in pipeline order. Prefill sends the
prompt through them (each actor's output ObjectRef is handed to the next, so hidden states move
actor to actor). A replica that decodes runs one loop: each iteration admits waiting sequences up
to the planned concurrency and the KV budget, runs one decode step for all active sequences
(split into up to one micro-batch per stage, pipelined through the stages so that no device
idles a whole step), hands each its token, and drops the finished or cancelled ones (freeing
their KV on every stage). Requests therefore join and leave between steps.

A replica whose stage actor dies (`is_actor_loss`) is marked lost (`mark_lost`): it takes no more
work, and every sequence it held gets `ReplicaLost` from its `join`, so that the deployment can
migrate it (re-prefill elsewhere) or fail it explicitly.

`kv_routes` and `hand_off` move a sequence's KV from a prefill replica to a decoder replica that
may split the layers differently: each decoder stage receives the intersection of its layer range
with every prefill stage's range, straight from those actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from e2llm.plan.types import Replica, Role, Stage
from e2llm.runtime.generation import Generation
from e2llm.runtime.metrics import ServingMetrics

HELD_KV_PER_STAGE = 4  # prefilled sequences a PREFILL replica may hold per stage, awaiting a decoder


class ReplicaLost(Exception):
    """A replica lost a stage actor (the process or its node died) and serves no more."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"replica {label} lost: {reason}")
        self.label = label


def is_actor_loss(error: BaseException) -> bool:
    """Whether a Ray call failed because an actor is gone (dead, or its node unreachable)."""
    from ray.exceptions import RayActorError

    return isinstance(error, RayActorError)


def lost_actor_id(error: BaseException) -> str | None:
    """The hex id of the actor whose loss `error` reports, where Ray names it."""
    actor_id = getattr(error, "actor_id", None)
    return actor_id if isinstance(actor_id, str) else None


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


class ReplicaRunner:
    """One replica: its actors, its prefill load, and (when it decodes) its batch."""

    def __init__(
        self,
        replica: Replica,
        actors: Sequence[Any],
        metrics: ServingMetrics,
        kv_budget_tokens: int | None = None,
    ):
        self.replica = replica
        self.actors = list(actors)
        self.metrics = metrics
        self.kv_budget_tokens = kv_budget_tokens  # decode: tokens of KV the stages may hold
        self.label = str(replica.id)
        self.prefill_tokens_outstanding = 0
        self.prefill_waiting = 0
        # Prefills in flight at once: one per stage keeps the pipeline full without piling up
        # KV that no decoder has asked for yet.
        self._prefill_slots = asyncio.Semaphore(max(1, len(self.actors)))
        # A PREFILL replica keeps each prompt's KV until a decoder takes it; bounding how many it
        # holds turns full decoders into back-pressure (prompts wait in the prefill queue).
        held = HELD_KV_PER_STAGE * max(1, len(self.actors))
        self._kv_held = asyncio.Semaphore(held) if replica.role == Role.PREFILL else None
        self._waiting: list[tuple[Generation, asyncio.Future[bool]]] = []
        self._admitted: list[Generation] = []  # holding a decode slot (KV arriving or active)
        self._ready: list[Generation] = []  # KV installed, joins the batch at the next step
        self._active: list[Generation] = []
        self._finished: dict[str, asyncio.Future[bool]] = {}  # seq_id -> resolved when it leaves
        self.lost: str | None = None  # why this replica serves no more (None: alive)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- liveness --------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.lost is None

    def owns_actor(self, actor_id: str) -> bool:
        return any(_actor_hex(a) == actor_id for a in self.actors)

    def mark_lost(self, reason: str) -> None:
        """Take this replica out of service: every sequence queued on or decoding here gets
        `ReplicaLost` from its `join` (its KV here is gone with the actor), and the stage actors
        that survive are stopped."""
        if self.lost is not None:
            return
        self.lost = reason
        error = ReplicaLost(self.label, reason)
        for _, admitted in self._waiting:
            if not admitted.done():
                admitted.set_exception(error)
        for future in self._finished.values():
            if not future.done():
                future.set_exception(error)
        self._waiting, self._admitted, self._ready, self._active = [], [], [], []
        self._finished.clear()
        self._wake.set()
        self._kill_survivors()

    def _kill_survivors(self) -> None:
        """Stop this replica's remaining stage actors: a replica missing a stage is useless, and
        its other actors would keep the weights and KV in their devices' memory."""
        if not self.actors:
            return
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    # ---- load, for the router ------------------------------------------------------------
    @property
    def prefill_capacity_tok_s(self) -> float:
        return self.replica.prefill_tok_s or 1.0

    @property
    def decode_sequences(self) -> int:
        """Sequences this decoder holds or has been promised (waiting, admitted)."""
        return len(self._waiting) + len(self._admitted)

    @property
    def decode_waiting(self) -> int:
        return len(self._waiting)

    @property
    def decode_active(self) -> int:
        return len(self._active)

    @property
    def kv_tokens_in_use(self) -> int:
        return sum(g.context_len for g in self._admitted)

    # ---- prefill -------------------------------------------------------------------------
    async def prefill(self, gen: Generation) -> int | None:
        """Run the prompt through the pipeline; returns the first token, or None if the client
        left while the request was queued. The KV stays on this replica's actors; on a PREFILL
        replica the caller must `release_kv()` once it has been handed off or freed."""
        context = gen.context_ids  # the prompt, plus the tokens so far when migrating
        n = len(context)
        self.prefill_tokens_outstanding += n
        self._set_waiting(+1)
        queued, held = True, False
        try:
            if self._kv_held is not None:
                await self._kv_held.acquire()
                held = True
            async with self._prefill_slots:
                self._set_waiting(-1)
                queued = False
                if gen.cancelled:
                    return None
                gen.prefill_start_s = time.monotonic()
                ref: Any = np.asarray(context, dtype=np.int64)
                last = len(self.actors) - 1
                for i, actor in enumerate(self.actors):
                    ref = actor.prefill.remote(gen.seq_id, ref, gen.sampling() if i == last else None)
                token = int(await ref)
                self.metrics.prefill_done(self.label, n, time.monotonic() - gen.prefill_start_s)
                held = False  # now the caller's to release
                return token
        finally:
            self.prefill_tokens_outstanding -= n
            if queued:
                self._set_waiting(-1)
            if held:
                self.release_kv()

    def release_kv(self) -> None:
        """A prefilled sequence's KV has left this PREFILL replica (handed off or freed)."""
        if self._kv_held is not None:
            self._kv_held.release()

    def _set_waiting(self, delta: int) -> None:
        self.prefill_waiting += delta
        self.metrics.set_prefill_queue(self.label, self.prefill_waiting)

    def free(self, seq_ids: list[str]) -> None:
        """Drop these sequences' KV on every stage (fire and forget; actor calls stay ordered)."""
        if seq_ids:
            for actor in self.actors:
                actor.free.remote(seq_ids)

    # ---- decode --------------------------------------------------------------------------
    async def join(self, gen: Generation, install: Callable[[], Awaitable[None]] | None) -> bool:
        """Queue `gen` for this decoder; once a slot is free, `install` its KV (None: it is
        already here, co-located), let it join the batch, and return True once it has left the
        batch (finished, failed or cancelled; this replica then recorded it). False if the
        client left while queued. Raises `ReplicaLost` if this replica dies meanwhile."""
        if self.lost is not None:
            raise ReplicaLost(self.label, self.lost)
        gen.queued_for_decode_s = time.monotonic()
        admitted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((gen, admitted))
        self._wake.set()
        if not await admitted:
            return False
        gen.decode_start_s = time.monotonic()
        try:
            if install is not None:
                await install()
        except BaseException:
            if gen in self._admitted:
                self._admitted.remove(gen)
            self._wake.set()
            raise
        if self.lost is not None:
            raise ReplicaLost(self.label, self.lost)
        finished = asyncio.get_running_loop().create_future()
        self._finished[gen.seq_id] = finished
        self._ready.append(gen)
        self._wake.set()
        return await finished

    def start(self) -> None:
        if self.replica.does_decode and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._decode_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _admit(self) -> None:
        keep = []
        for gen, admitted in self._waiting:
            if gen.cancelled:
                admitted.set_result(False)
            elif self._has_room(gen):
                self._admitted.append(gen)
                admitted.set_result(True)
            else:
                keep.append((gen, admitted))
        self._waiting = keep

    def _has_room(self, gen: Generation) -> bool:
        if len(self._admitted) >= self.replica.concurrency:
            return False
        if self.kv_budget_tokens is None or not self._admitted:
            return True  # an empty decoder always takes a request, however long
        reserved = sum(g.max_context_len for g in self._admitted)
        return reserved + gen.max_context_len <= self.kv_budget_tokens

    def _retire(self, done: list[Generation]) -> None:
        for gen in done:
            self._active.remove(gen)
            self._admitted.remove(gen)
            self.metrics.request_finished(gen)
            finished = self._finished.pop(gen.seq_id, None)
            if finished is not None and not finished.done():
                finished.set_result(True)
        self.free([g.seq_id for g in done])

    async def _decode_loop(self) -> None:
        while self.lost is None:
            self._admit()
            self._active.extend(self._ready)
            self._ready.clear()
            self._retire([g for g in self._active if g.done])
            self.metrics.set_decode_queue(self.label, len(self._waiting), len(self._active))
            if not self._active:
                # Idle: sleep until a request arrives; wake now and then to notice a waiting
                # request whose client has gone.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.25)
                continue
            batch = list(self._active)
            groups = split_batch(batch, len(self.actors))
            t0 = time.monotonic()
            try:
                results = await asyncio.gather(*(self._step(group) for group in groups))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if is_actor_loss(e):  # the sequences move elsewhere (see Deployment)
                    self.mark_lost(f"stage actor died during decode: {type(e).__name__}")
                    return
                # a stage failed: fail this batch, keep serving others
                for gen in batch:
                    gen.fail(f"decode failed on replica {self.label}: {e}")
                continue
            self.metrics.decode_step(self.label, len(batch), time.monotonic() - t0)
            if self.lost is not None:
                return  # lost meanwhile (noticed elsewhere): these sequences have moved on
            for group, tokens in zip(groups, results, strict=True):
                for gen, token in zip(group, tokens, strict=True):
                    gen.add_token(int(token))

    def _step(self, group: list[Generation]) -> Any:
        """Submit one decode step of `group` through every stage; returns the last ObjectRef."""
        ids = [g.seq_id for g in group]
        ref: Any = np.asarray([g.generated[-1] for g in group], dtype=np.int64)
        last = len(self.actors) - 1
        for i, actor in enumerate(self.actors):
            ref = actor.decode.remote(ids, ref, [g.sampling() for g in group] if i == last else None)
        return ref


def _actor_hex(actor: Any) -> str | None:
    actor_id = getattr(actor, "_actor_id", None)
    return actor_id.hex() if actor_id is not None else None


def split_batch(batch: list[Generation], n_stages: int) -> list[list[Generation]]:
    """The decode batch as micro-batches, one per stage at most, all in flight in one step: while
    stage 2 runs micro-batch 1, stage 1 runs micro-batch 2, so no device idles for a whole step.
    Every sequence still advances exactly one token per step."""
    n = max(1, min(n_stages, len(batch)))
    size, extra = divmod(len(batch), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(batch[start:end])
        start = end
    return groups


async def hand_off(gen: Generation, src: ReplicaRunner, dst: ReplicaRunner, metrics: ServingMetrics) -> None:
    """Move `gen`'s prompt KV from prefill replica `src` to decoder `dst`, then free it on
    `src`. Each decoder stage pulls its pieces straight from the prefill actors' results."""
    t0 = time.monotonic()
    length = gen.context_len - 1  # the last token (from the prefill) is not in the KV yet
    imports = []
    for j, pieces in enumerate(kv_routes(src.replica.stages, dst.replica.stages)):
        parts = [src.actors[i].export_kv.remote(gen.seq_id, start, end) for i, start, end in pieces]
        imports.append(dst.actors[j].import_kv.remote(gen.seq_id, length, *parts))
    try:
        received = sum(await asyncio.gather(*imports))
    except BaseException:
        dst.free([gen.seq_id])
        raise
    finally:
        src.free([gen.seq_id])
    gen.handoff_s, gen.handoff_bytes = time.monotonic() - t0, received
    metrics.kv_moved(src.label, dst.label, received, gen.handoff_s)

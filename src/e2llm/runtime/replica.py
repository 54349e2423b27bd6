"""One replica on the driver side: its stage actors, its prefill queue, its decode batch.

A `ReplicaRunner` holds one plan replica's stage actors in pipeline order (`pipeline`). Prefill
runs the prompt through them. A replica that decodes runs one loop: each iteration admits waiting
sequences up to the planned concurrency and the KV budget (`batch.DecodeSlots`), runs one decode
step for the batch, hands each sequence its token and lets the finished or cancelled ones go.
Requests therefore join and leave between steps.

A MIXED replica runs both phases in that one loop (Sarathi-style, as `sim/mixed.py` defines
it): a prompt routed to it waits for a decode slot like any sequence (it decodes where it is
prefilled), then its prefill advances by chunks, each iteration one decode step of the batch plus
the prompt tokens the iteration's token budget (`chunk_tokens`) leaves beside it, in one call per
stage (`pipeline.mixed_call`). Its first token comes with its last chunk; it joins the batch there.

Its role is what it does now (`role`): the role controller (`runtime.adapt`) and Splitwise's mixed
pool (`router`) change it at run time with `become`, the weights staying where they are. A replica
that stops taking work before a switch has `accepting` false (the router then skips it).

KV leaves a replica on one path, `release`: on finish, cancel, error, hand-off, shutdown and
loss alike. A PREFILL replica keeps each prompt's KV until a decoder has taken it, and holds at
most `HELD_KV_PER_STAGE` per stage: full decoders turn into back-pressure (prompts wait in the
prefill queue) instead of KV piling up. The hold applies while it is a PREFILL replica: prompts
prefilled in another role (borrowed into Splitwise's mixed pool) take none.

A replica whose stage actor dies is marked lost (`mark_lost`): it takes no more work, every
sequence it held gets `ReplicaLost` (the request's life cycle migrates or fails it), and its
surviving actors are stopped.

~390 lines: one class, the driver-side loop of one replica (batching, the pipeline, hand-off and
loss are already modules of their own); its queue and its decode batch share one state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from e2llm.plan.types import Replica, Role
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.batch import DecodeSlots
from e2llm.runtime.capacity import Capacity, from_plan
from e2llm.runtime.draw import Chosen, Picked
from e2llm.runtime.generation import Generation
from e2llm.runtime.loss import ReplicaLost, actor_hex, is_actor_loss
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.pipeline import (
    Piece,
    decode_call,
    free_call,
    mixed_call,
    prefill_call,
    split_batch,
    split_pieces,
)

log = logging.getLogger(__name__)

HELD_KV_PER_STAGE = 4  # prefilled sequences a PREFILL replica may hold per stage, awaiting a decoder
IDLE_POLL_S = 0.25  # an idle decoder wakes this often to notice a waiting request whose client left


class ReplicaRunner:
    """One replica: its actors, its prefill load, and (when it decodes) its batch."""

    def __init__(
        self,
        replica: Replica,
        actors: Sequence[Any],
        metrics: ServingMetrics,
        kv_budget_tokens: int | None = None,
        capacity: Capacity | None = None,
        chunk_tokens: int = PolicySettings().chunk_tokens,
    ):
        self.replica = replica
        self.actors = list(actors)
        self.metrics = metrics
        self.label = str(replica.id)
        self.capacity = capacity or from_plan(replica)
        self.chunk_tokens = chunk_tokens  # MIXED: tokens per iteration (decode tokens + prompt chunk)
        self.home_role: Role | None = None  # borrowed into Splitwise's mixed pool from this role
        self.accepting = True  # False while it drains for a role switch: nothing new is routed here
        self.prefill_tokens_outstanding = 0
        self.prefill_waiting = 0
        # Prefills in flight at once: one per stage keeps the pipeline full without piling up
        # KV that no decoder has asked for yet.
        self._prefill_slots = asyncio.Semaphore(max(1, len(self.actors)))
        self._kv_held: asyncio.Semaphore | None = None  # made when it first is a PREFILL replica
        self._holding: set[str] = set()  # sequences holding one of `_kv_held`
        self._kv: set[str] = set()  # sequences whose KV may be on this replica's actors
        self.kv_out = 0  # KV hand-offs from here in flight, and when (estimated) their links clear
        self._wire_until_s = 0.0
        slots = replica.concurrency if replica.does_decode else self.capacity.decode_slots
        self.slots = DecodeSlots(slots, kv_budget_tokens)
        self.lost: str | None = None  # why this replica serves no more (None: alive)
        # Told of a loss, with the requests the replica held then (set by the fleet).
        self.on_lost: Callable[[ReplicaRunner, int], None] = lambda runner, held: None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._set_role(replica.role)

    # ---- role ----------------------------------------------------------------------------
    @property
    def role(self) -> Role:
        return self.replica.role

    def become(self, role: Role, home: Role | None = None) -> None:
        """Work in `role` from now on (weights stay resident: only the scheduling changes).
        `home`: the pool a replica borrowed into Splitwise's mixed pool returns to."""
        self.home_role = home
        self._set_role(role)
        self._wake.set()

    def _set_role(self, role: Role) -> None:
        self.replica = dataclasses.replace(self.replica, role=role)
        if role is Role.PREFILL and self._kv_held is None:
            self._kv_held = asyncio.Semaphore(HELD_KV_PER_STAGE * max(1, len(self.actors)))

    # ---- liveness --------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.lost is None

    def owns_actor(self, actor_id: str) -> bool:
        return any(actor_hex(a) == actor_id for a in self.actors)

    def mark_lost(self, reason: str) -> None:
        """Take this replica out of service: every sequence queued on or decoding here gets
        `ReplicaLost` (its KV here is gone with the actor), and the surviving stage actors are
        stopped (a replica missing a stage is useless, and they would keep weights and KV in
        their devices' memory)."""
        if self.lost is not None:
            return
        self.lost = reason
        held = self.requests_here
        self.metrics.replica_gone(self.label)
        self.slots.fail_all(ReplicaLost(self.label, reason))
        self._wake.set()
        if self.actors:
            import ray

            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.on_lost(self, held)

    def evict_all(self, error: ReplicaLost) -> int:
        """Hand its decode sequences back to their life cycles with `error` (they migrate); the
        replica serves on. Returns how many."""
        moved = self.slots.evict(error)
        self._wake.set()
        return moved

    # ---- load, for the router ------------------------------------------------------------
    @property
    def prefill_capacity_tok_s(self) -> float:
        return self.replica.prefill_tok_s or 1.0

    @property
    def kv_budget_tokens(self) -> int | None:
        return self.slots.kv_budget_tokens

    @property
    def decode_sequences(self) -> int:
        """Sequences this decoder holds or has been promised (waiting, admitted)."""
        return len(self.slots.waiting) + len(self.slots.admitted)

    @property
    def decode_waiting(self) -> int:
        return len(self.slots.waiting)

    @property
    def decode_active(self) -> int:
        return len(self.slots.active)

    @property
    def kv_tokens_in_use(self) -> int:
        return self.slots.kv_tokens_in_use

    @property
    def requests_here(self) -> int:
        """Requests queued, prefilling, held or decoding on this replica."""
        waiting = {g.seq_id for g, _ in self.slots.waiting}
        return self.prefill_waiting + len(self._kv | waiting)

    @property
    def busy(self) -> bool:
        """Whether a request is queued or served here (a retiring replica waits for False)."""
        return bool(self.prefill_waiting or self.prefill_tokens_outstanding or self.decode_sequences)

    # ---- KV: the one way out ---------------------------------------------------------------
    def release(self, *gens: Generation) -> None:
        """Let these sequences go from this replica, on whichever path they leave (finished,
        cancelled, failed, handed off, shut down, lost): their decode slot and prefill hold are
        given back and their KV is dropped on every stage. Idempotent: a sequence this replica no
        longer holds is skipped, so every exit path may call it."""
        freed = []
        for gen in gens:
            self.slots.leave(gen)
            if gen.seq_id in self._kv:
                self._kv.discard(gen.seq_id)
                freed.append(gen.seq_id)
            if gen.seq_id in self._holding and self._kv_held is not None:
                self._holding.discard(gen.seq_id)
                self._kv_held.release()
        if self.alive:  # a lost replica's actors are gone, and their KV with them
            free_call(self.actors, freed)

    # ---- KV hand-offs out of it, for the policy's transfer backlog -------------------------
    def kv_leaving(self, prompt_tokens: int) -> None:
        """A hand-off of a `prompt_tokens`-token prompt's KV starts; it queues behind the ones
        still on the links (estimated at `capacity.kv_s_per_token`)."""
        now = time.monotonic()
        self.kv_out += 1
        self._wire_until_s = max(now, self._wire_until_s) + prompt_tokens * self.capacity.kv_s_per_token

    def kv_left(self) -> None:
        self.kv_out -= 1

    def transfer_backlog_s(self, now: float) -> float:
        """Seconds of KV hand-offs out of it still to go (estimated)."""
        return max(0.0, self._wire_until_s - now) if self.kv_out else 0.0

    # ---- prefill -------------------------------------------------------------------------
    async def prefill(self, gen: Generation) -> Chosen | None:
        """Run `gen`'s context through the pipeline; returns the first token (and its logprob,
        where asked), or None if the
        client left while the request was queued. The KV stays here until `release(gen)`.
        On a MIXED replica the prompt first takes a decode slot, then is prefilled by chunks."""
        n = len(gen.context_ids)
        self.prefill_tokens_outstanding += n
        self._set_waiting(+1)
        queued = True

        def started() -> None:  # the prompt leaves the queue: its KV forms on the actors from now
            nonlocal queued
            self._set_waiting(-1)
            queued = False
            self._kv.add(gen.seq_id)
            gen.prefill_start_s = time.monotonic()

        try:
            run = self._chunked_prefill if self.role is Role.MIXED else self._whole_prefill
            token = await run(gen, started)
            if token is not None:
                assert gen.prefill_start_s is not None
                self.metrics.prefill_done(self.label, n, time.monotonic() - gen.prefill_start_s)
            return token
        finally:
            self.prefill_tokens_outstanding -= n
            if queued:
                self._set_waiting(-1)

    async def _whole_prefill(self, gen: Generation, started: Callable[[], None]) -> Chosen | None:
        if self.role is Role.PREFILL and self._kv_held is not None:
            await self._kv_held.acquire()
            self._holding.add(gen.seq_id)  # the hold is the sequence's until `release`
            self._kv.add(gen.seq_id)
        async with self._prefill_slots:
            if gen.cancelled:
                return None
            started()
            picked: Picked = await prefill_call(self.actors, gen)
            return picked.row(0)

    async def _chunked_prefill(self, gen: Generation, started: Callable[[], None]) -> Chosen | None:
        if self.lost is not None:
            raise ReplicaLost(self.label, self.lost)
        admitted = self.slots.queue(gen)
        self._wake.set()
        if not await admitted:
            return None
        started()
        first = self.slots.start_prefill(gen)
        self._wake.set()
        return await first

    def _set_waiting(self, delta: int) -> None:
        self.prefill_waiting += delta
        self.metrics.set_prefill_queue(self.label, self.prefill_waiting)

    # ---- decode --------------------------------------------------------------------------
    async def join(self, gen: Generation, install: Callable[[], Awaitable[None]] | None) -> bool:
        """Queue `gen` for this decoder; once a slot is free, `install` its KV (None: it is
        already here, co-located), let it join the batch, and return True once it has left the
        batch (finished, failed or cancelled). False if the client left while queued. Raises
        `ReplicaLost` if this replica dies meanwhile. The caller `release`s `gen` afterwards."""
        if self.lost is not None:
            raise ReplicaLost(self.label, self.lost)
        gen.queued_for_decode_s = time.monotonic()
        if gen not in self.slots.admitted:  # (a MIXED replica's own prompt holds its slot already)
            admitted = self.slots.queue(gen)
            self._wake.set()
            if not await admitted:
                return False
        gen.decode_start_s = time.monotonic()
        self._kv.add(gen.seq_id)  # from here on, KV may arrive on this replica's actors
        if install is not None:
            await install()
        if self.lost is not None:
            raise ReplicaLost(self.label, self.lost)
        left = self.slots.enter(gen)
        self._wake.set()
        await left
        return True

    def start(self) -> None:
        """Start its decode loop (every replica runs one: a role switch may make it decode)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._decode_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _decode_loop(self) -> None:
        while self.lost is None:
            self.slots.admit()
            batch, done = self.slots.step_batch()
            self.release(*done)
            self.metrics.set_decode_queue(self.label, len(self.slots.waiting), len(batch))
            pieces = self.slots.chunks(self.chunk_tokens) if self.slots.prefilling else []
            if not batch and not pieces:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)
                continue
            if pieces:
                await self._mixed_step(batch, pieces)
            else:
                await self._step(batch)

    async def _step(self, batch: list[Generation]) -> None:
        """One decode step of `batch`: a token for each sequence, or the batch failed."""
        groups = split_batch(batch, len(self.actors))
        t0 = time.monotonic()
        try:
            results = await asyncio.gather(*(decode_call(self.actors, group) for group in groups))
        except Exception as e:
            self._step_failed(e, batch)
            return
        self.metrics.decode_step(self.label, len(batch), time.monotonic() - t0)
        if self.lost is not None:
            return  # lost meanwhile (noticed elsewhere): these sequences have moved on
        for group, picked in zip(groups, results, strict=True):
            for i, gen in enumerate(group):
                gen.add_token(*picked.row(i))

    async def _mixed_step(self, batch: list[Generation], pieces: list[Piece]) -> None:
        """One MIXED iteration: a decode step of `batch` plus the prompt `pieces`, split over
        micro-batches that are in flight together (each a share of both)."""
        n = len(self.actors)
        groups = split_batch(batch, n)
        shares = split_pieces(pieces, len(groups) if batch else n)
        if len(groups) < len(shares):
            groups += [[] for _ in range(len(shares) - len(groups))]
        shares += [[] for _ in range(len(groups) - len(shares))]
        t0 = time.monotonic()
        try:
            results = await asyncio.gather(
                *(mixed_call(self.actors, g, p) for g, p in zip(groups, shares, strict=True))
            )
        except Exception as e:
            self._step_failed(e, batch + [g for g, _, _ in pieces])
            return
        if batch:
            self.metrics.decode_step(self.label, len(batch), time.monotonic() - t0)
            self.metrics.mixed_steps.labels(self.label).inc()
        if self.lost is not None:
            return
        for group, share, (picked, firsts) in zip(groups, shares, results, strict=True):
            for i, gen in enumerate(group):
                gen.add_token(*picked.row(i))
            for (gen, _, count), first in zip(share, firsts, strict=True):
                self.slots.chunk_done(gen, count, None if first is None else first.row(0))

    def _step_failed(self, error: Exception, gens: list[Generation]) -> None:
        if is_actor_loss(error):  # the sequences move elsewhere (see `lifecycle`)
            self.mark_lost(f"stage actor died during decode: {type(error).__name__}")
            return
        # a stage failed: fail these sequences (the details stay in this log), keep serving others
        ids = ",".join(g.seq_id for g in gens)
        log.error("replica %s: decode step of requests %s failed", self.label, ids, exc_info=error)
        for gen in gens:
            gen.fail(f"decode failed on replica {self.label}")
            self.slots.leave(gen)

"""A decoder's slots: which sequences wait for one, hold one, and are in the decode batch.

A sequence queues (`queue`), is admitted when a slot is free and its KV fits (`admit`; it then
holds the slot while its KV arrives), enters the batch at the next step (`enter`, `step_batch`)
and leaves it when done (`leave`), which frees the slot. On a MIXED replica a prompt queues the
same way, then is prefilled chunk by chunk while it holds its slot (`start_prefill`, `chunks`,
`chunk_done`) and enters the batch once its first token is out. Plain asyncio bookkeeping: no
Ray, no model. Whether one more sequence fits is `fits`, the runtime's call of the serving
policy's decode admission (`policy.routing.admits`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from e2llm.policy.chunking import plan_chunks
from e2llm.policy.routing import admits
from e2llm.runtime.draw import Chosen
from e2llm.runtime.generation import Generation
from e2llm.sim.state import NO_KV_LIMIT


def kv_free_tokens(kv_budget_tokens: int | None, reserved: Sequence[int]) -> int:
    """Tokens of KV still free beside the reservations (`NO_KV_LIMIT` without a budget)."""
    return NO_KV_LIMIT if kv_budget_tokens is None else kv_budget_tokens - sum(reserved)


def fits(concurrency: int, kv_budget_tokens: int | None, reserved: Sequence[int], request: int) -> bool:
    """Whether a decoder holding sequences that reserve `reserved` tokens of KV each (their
    prompt plus `max_tokens`) may admit one that reserves `request`: at most `concurrency`
    sequences, and their reservations within the KV budget (`policy.routing.admits`). An empty
    decoder always takes a request, however long (otherwise a long one could never be served)."""
    free = NO_KV_LIMIT if not reserved else kv_free_tokens(kv_budget_tokens, reserved)
    return admits(len(reserved), concurrency, free, request)


class DecodeSlots:
    def __init__(self, concurrency: int, kv_budget_tokens: int | None):
        self.concurrency = concurrency
        self.kv_budget_tokens = kv_budget_tokens  # tokens of KV the stages may hold; None: no limit
        self.waiting: list[tuple[Generation, asyncio.Future[bool]]] = []
        self.admitted: list[Generation] = []  # holding a slot: KV arriving, ready or in the batch
        self.ready: list[Generation] = []  # KV in place: joins the batch at the next step
        self.active: list[Generation] = []  # in the decode batch
        self.prefilling: list[Generation] = []  # MIXED: admitted prompts being prefilled, in order
        self._prefilled: dict[str, int] = {}  # ... and how many context tokens each has done
        self._first: dict[str, asyncio.Future[Chosen | None]] = {}  # ... resolved with the first token
        self._left: dict[str, asyncio.Future[None]] = {}  # seq_id -> resolved when it leaves

    @property
    def kv_tokens_in_use(self) -> int:
        return sum(g.context_len for g in self.admitted)

    def queue(self, gen: Generation) -> asyncio.Future[bool]:
        """Queue `gen` for a slot: the future is True once admitted, False if it was cancelled
        while waiting."""
        admitted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.append((gen, admitted))
        return admitted

    @property
    def reserved(self) -> list[int]:
        """KV tokens each admitted sequence reserves (its prompt plus `max_tokens`)."""
        return [g.max_context_len for g in self.admitted]

    def admit(self) -> None:
        """Admit waiting sequences in arrival order while they fit, stopping at the first that
        does not (no overtaking: a long request is never starved by short ones, as the policy
        says); drop the cancelled ones wherever they wait."""
        keep: list[tuple[Generation, asyncio.Future[bool]]] = []
        for gen, admitted in self.waiting:
            if gen.cancelled:
                admitted.set_result(False)
            elif not keep and fits(
                self.concurrency, self.kv_budget_tokens, self.reserved, gen.max_context_len
            ):
                self.admitted.append(gen)
                admitted.set_result(True)
            else:
                keep.append((gen, admitted))
        self.waiting = keep

    @property
    def prefilled_tokens(self) -> int:
        """Context tokens the MIXED prompts being prefilled have done so far."""
        return sum(self._prefilled.values())

    def start_prefill(self, gen: Generation) -> asyncio.Future[Chosen | None]:
        """`gen` (admitted) is prefilled chunk by chunk from the next iteration; the future gets
        its first token, or None if it is cancelled or leaves first."""
        first: asyncio.Future[Chosen | None] = asyncio.get_running_loop().create_future()
        self._first[gen.seq_id] = first
        self._prefilled[gen.seq_id] = 0
        self.prefilling.append(gen)
        return first

    def chunks(self, chunk_tokens: int) -> list[tuple[Generation, int, int]]:
        """The prompt pieces of the next iteration beside the batch, (prompt, first context
        position, tokens) in order (`policy.chunking.plan_chunks`); drops the cancelled prompts."""
        for gen in [g for g in self.prefilling if g.cancelled]:
            self.leave(gen)
        done = [self._prefilled[g.seq_id] for g in self.prefilling]
        sizes = plan_chunks(
            [len(g.context_ids) - d for g, d in zip(self.prefilling, done, strict=True)],
            len(self.active) + len(self.ready),
            chunk_tokens,
        )
        return [(g, d, n) for g, d, n in zip(self.prefilling, done, sizes, strict=False)]

    def chunk_done(self, gen: Generation, tokens: int, first_token: Chosen | None) -> None:
        """`tokens` more of `gen`'s context are prefilled; the last piece brings its first token."""
        if gen.seq_id not in self._prefilled:
            return  # it left meanwhile
        self._prefilled[gen.seq_id] += tokens
        if self._prefilled[gen.seq_id] >= len(gen.context_ids):
            self.prefilling.remove(gen)
            del self._prefilled[gen.seq_id]
            first = self._first.pop(gen.seq_id)
            if not first.done():
                first.set_result(first_token)

    def enter(self, gen: Generation) -> asyncio.Future[None]:
        """`gen` (admitted, its KV in place) joins the batch at the next step; the future
        resolves when it leaves."""
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._left[gen.seq_id] = left
        self.ready.append(gen)
        return left

    def step_batch(self) -> tuple[list[Generation], list[Generation]]:
        """Start the ready sequences and take the done ones out: (the batch of the next step,
        the sequences that left it)."""
        self.active.extend(self.ready)
        self.ready.clear()
        done = [g for g in self.active if g.done]
        for gen in done:
            self.leave(gen)
        return list(self.active), done

    def leave(self, gen: Generation) -> None:
        """Take `gen` out wherever it is (a no-op if it holds no slot) and free its slot."""
        for bucket in (self.active, self.ready, self.admitted, self.prefilling):
            if gen in bucket:
                bucket.remove(gen)
        self._prefilled.pop(gen.seq_id, None)
        first = self._first.pop(gen.seq_id, None)
        if first is not None and not first.done():
            first.set_result(None)
        left = self._left.pop(gen.seq_id, None)
        if left is not None and not left.done():
            left.set_result(None)

    def evict(self, error: BaseException) -> int:
        """Hand back the sequences waiting for a slot or in the batch with `error` (they migrate);
        sequences whose KV is still arriving are left to enter (a later call takes them).
        Returns how many were handed back."""
        moved = 0
        for _, admitted in self.waiting:
            if not admitted.done():
                admitted.set_exception(error)
                moved += 1
        self.waiting = []
        for gen in [*self.ready, *self.active]:
            left = self._left.pop(gen.seq_id, None)
            self.leave(gen)
            if left is not None and not left.done():
                left.set_exception(error)
                moved += 1
        return moved

    def fail_all(self, error: BaseException) -> None:
        """Every sequence waiting or holding a slot gets `error` (the replica is lost)."""
        for _, admitted in self.waiting:
            if not admitted.done():
                admitted.set_exception(error)
        for left in self._left.values():
            if not left.done():
                left.set_exception(error)
        for first in self._first.values():
            if not first.done():
                first.set_exception(error)
        self.waiting, self.admitted, self.ready, self.active, self.prefilling = [], [], [], [], []
        self._left.clear()
        self._first.clear()
        self._prefilled.clear()

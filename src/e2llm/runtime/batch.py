"""A decoder's slots: which sequences wait for one, hold one, and are in the decode batch.

A sequence queues (`queue`), is admitted when a slot is free and its KV fits (`admit`; it then
holds the slot while its KV arrives), enters the batch at the next step (`enter`, `step_batch`)
and leaves it when done (`leave`), which frees the slot. Plain asyncio bookkeeping: no Ray, no
model. Whether one more sequence fits is `fits`, a pure function of the planned concurrency, the
KV budget and what the admitted sequences reserve; the serving policy can take it over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from e2llm.runtime.generation import Generation


def fits(concurrency: int, kv_budget_tokens: int | None, reserved: Sequence[int], request: int) -> bool:
    """Whether a decoder holding sequences that reserve `reserved` tokens of KV each (their
    prompt plus `max_tokens`) may admit one that reserves `request`: at most `concurrency`
    sequences, and their reservations within the KV budget. An empty decoder always takes a
    request, however long (otherwise a long one could never be served)."""
    if len(reserved) >= concurrency:
        return False
    if kv_budget_tokens is None or not reserved:
        return True
    return sum(reserved) + request <= kv_budget_tokens


class DecodeSlots:
    def __init__(self, concurrency: int, kv_budget_tokens: int | None):
        self.concurrency = concurrency
        self.kv_budget_tokens = kv_budget_tokens  # tokens of KV the stages may hold; None: no limit
        self.waiting: list[tuple[Generation, asyncio.Future[bool]]] = []
        self.admitted: list[Generation] = []  # holding a slot: KV arriving, ready or in the batch
        self.ready: list[Generation] = []  # KV in place: joins the batch at the next step
        self.active: list[Generation] = []  # in the decode batch
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

    def admit(self) -> None:
        """Admit waiting sequences, in arrival order, while they fit; drop the cancelled ones."""
        keep = []
        for gen, admitted in self.waiting:
            reserved = [g.max_context_len for g in self.admitted]
            if gen.cancelled:
                admitted.set_result(False)
            elif fits(self.concurrency, self.kv_budget_tokens, reserved, gen.max_context_len):
                self.admitted.append(gen)
                admitted.set_result(True)
            else:
                keep.append((gen, admitted))
        self.waiting = keep

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
        for bucket in (self.active, self.ready, self.admitted):
            if gen in bucket:
                bucket.remove(gen)
        left = self._left.pop(gen.seq_id, None)
        if left is not None and not left.done():
            left.set_result(None)

    def fail_all(self, error: BaseException) -> None:
        """Every sequence waiting or holding a slot gets `error` (the replica is lost)."""
        for _, admitted in self.waiting:
            if not admitted.done():
                admitted.set_exception(error)
        for left in self._left.values():
            if not left.done():
                left.set_exception(error)
        self.waiting, self.admitted, self.ready, self.active = [], [], [], []
        self._left.clear()

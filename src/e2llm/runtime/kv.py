"""One stage's KV cache for many sequences at once.

Layout (as gpt-fast): a pool per stage, `k[layer, slot, kv_head, position, head_dim]` (and `v`),
one slot per live sequence. Capacity (positions) and the number of slots grow by doubling, so
appending a token is amortised O(1) copies, never O(n^2). Slots are handed out lowest-first, so a
steady decode batch usually occupies consecutive slots and attention reads the pool through a view
instead of gathering. Memory stays reserved after sequences end (reused by the next ones).
"""

from __future__ import annotations

import heapq
import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_INITIAL_CAPACITY = 128
_INITIAL_SLOTS = 2


@dataclass(frozen=True, slots=True)
class SlotBatch:
    """The rows of one forward pass: slot per row, and how many key positions to read."""

    index: Tensor  # [B] long: pool slot of each row
    span: slice | None  # the same slots as a slice when they are consecutive (a view, no gather)
    length: int  # keys to read per row: max over rows of (last position + 1)
    start: int | None = None  # first new position when every row writes the same positions


class KVCache:
    """K/V of global layers `layers` for every sequence held by one stage."""

    def __init__(
        self, layers: Sequence[int], n_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ):
        self.layers = tuple(layers)
        self._local = {layer: i for i, layer in enumerate(self.layers)}
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        shape = (len(self.layers), _INITIAL_SLOTS, n_kv_heads, _INITIAL_CAPACITY, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._slot: dict[str, int] = {}
        self._length: dict[str, int] = {}
        self._present: dict[str, set[int]] = {}  # layers holding valid K/V for the sequence
        self._free: list[int] = list(range(_INITIAL_SLOTS))

    # -- bookkeeping -------------------------------------------------------------------------
    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._slot

    def length(self, seq_id: str) -> int:
        """Tokens cached for `seq_id` (0 for an unknown sequence)."""
        return self._length.get(seq_id, 0)

    def missing_layers(self, seq_id: str) -> list[int]:
        """Owned layers without K/V for `seq_id` (non-empty only while a hand-off is partial)."""
        present = self._present.get(seq_id, set())
        return [layer for layer in self.layers if layer not in present]

    def used_bytes(self) -> int:
        per_token = 2 * len(self.layers) * self.n_kv_heads * self.head_dim * self.k.element_size()
        return per_token * sum(self._length.values())

    def reserved_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def allocate(self, seq_id: str) -> None:
        """Give `seq_id` an empty slot (its length starts at 0, all layers present)."""
        if seq_id in self._slot:
            raise ValueError(f"sequence {seq_id!r} already has KV on this stage")
        if not self._free:
            self._grow(slots=2 * self.k.shape[1], capacity=self.k.shape[3])
        self._slot[seq_id] = heapq.heappop(self._free)
        self._length[seq_id] = 0
        self._present[seq_id] = set(self.layers)

    def free(self, seq_id: str) -> None:
        """Forget `seq_id` (no-op when unknown, so cancellation can free unconditionally)."""
        slot = self._slot.pop(seq_id, None)
        if slot is not None:
            heapq.heappush(self._free, slot)
            del self._length[seq_id]
            del self._present[seq_id]

    def advance(self, seq_id: str, n_tokens: int) -> None:
        self._length[seq_id] += n_tokens

    def batch(self, seq_ids: Sequence[str], length: int, start: int | None = None) -> SlotBatch:
        """Slots of `seq_ids` for a forward pass reading `length` key positions (grows capacity).
        `start`: the rows all write positions [start, length) (lets writes use plain slicing)."""
        self._reserve(length)
        slots = [self._slot[s] for s in seq_ids]
        consecutive = all(b == a + 1 for a, b in itertools.pairwise(slots))
        span = slice(slots[0], slots[-1] + 1) if consecutive else None
        return SlotBatch(torch.tensor(slots, device=self.device), span, length, start)

    def reserve(self, slots: int, capacity: int) -> None:
        """Hold the pool for `slots` sequences of `capacity` tokens now (the planned load), so
        serving it allocates nothing more."""
        if slots > self.k.shape[1] or capacity > self.k.shape[3]:
            self._grow(max(slots, self.k.shape[1]), max(capacity, self.k.shape[3]))

    def _reserve(self, length: int) -> None:
        if length > self.k.shape[3]:
            capacity = self.k.shape[3]
            while capacity < length:
                capacity *= 2
            self._grow(slots=self.k.shape[1], capacity=capacity)

    def _grow(self, slots: int, capacity: int) -> None:
        old_s, old_c = self.k.shape[1], self.k.shape[3]
        shape = (len(self.layers), slots, self.n_kv_heads, capacity, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        k[:, :old_s, :, :old_c] = self.k
        v[:, :old_s, :, :old_c] = self.v
        self.k, self.v = k, v
        for slot in range(old_s, slots):
            heapq.heappush(self._free, slot)

    # -- the one verb attention uses -----------------------------------------------------------
    def update(
        self, layer: int, batch: SlotBatch, positions: Tensor, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Write new K/V ([B, T, kv_heads, head_dim] at `positions` [B, T]) of global `layer`;
        return all keys and values to attend to, [B, kv_heads, batch.length, head_dim]."""
        i = self._local[layer]
        pool_k, pool_v = self.k[i], self.v[i]
        if batch.span is not None and batch.start is not None:  # a block copy, no scatter
            new = slice(batch.start, batch.length)
            pool_k[batch.span, :, new] = k.transpose(1, 2)
            pool_v[batch.span, :, new] = v.transpose(1, 2)
        else:
            rows = batch.index[:, None]
            pool_k[rows, :, positions] = k
            pool_v[rows, :, positions] = v
        if batch.span is not None:
            return pool_k[batch.span, :, : batch.length], pool_v[batch.span, :, : batch.length]
        return pool_k[batch.index, :, : batch.length], pool_v[batch.index, :, : batch.length]

    # -- hand-off ------------------------------------------------------------------------------
    def export(self, seq_id: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Copies of the present layers' K/V, global layer -> (k, v), each [kv_heads, T, head_dim].

        numpy has no bfloat16: bf16 caches export their raw bits as int16 arrays.
        """
        slot, n = self._slot[seq_id], self._length[seq_id]
        out = {}
        for layer in sorted(self._present[seq_id]):
            i = self._local[layer]
            pair = (self.k[i, slot, :, :n], self.v[i, slot, :, :n])
            out[layer] = tuple(_to_numpy(t) for t in pair)
        return out  # type: ignore[return-value]

    def import_(self, seq_id: str, kv: Mapping[int, tuple[np.ndarray, np.ndarray]], length: int) -> list[int]:
        """Copy in the owned layers found in `kv` (others are ignored); returns the layers taken.

        May be called several times for one sequence (pieces from several prefill stages); every
        call must carry the same `length`. The arrays are only read, never written.
        """
        if seq_id not in self._slot:
            self.allocate(seq_id)
            self._present[seq_id] = set()
            self._length[seq_id] = length
        elif self._length[seq_id] != length:
            raise ValueError(f"KV import for {seq_id!r}: length {length} != cached {self._length[seq_id]}")
        self._reserve(length)
        slot = self._slot[seq_id]
        taken = []
        for layer, (k, v) in kv.items():
            if layer not in self._local:
                continue
            i = self._local[layer]
            for pool, arr in ((self.k, k), (self.v, v)):
                if arr.shape != (self.n_kv_heads, length, self.head_dim):
                    raise ValueError(f"KV import for {seq_id!r} layer {layer}: shape {arr.shape}")
                pool[i, slot, :, :length] = _from_numpy(arr, self.dtype)
            self._present[seq_id].add(layer)
            taken.append(layer)
        return taken


def _to_numpy(t: Tensor) -> np.ndarray:
    t = t.detach().to("cpu", copy=True).contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def _from_numpy(arr: np.ndarray, dtype: torch.dtype) -> Tensor:
    with warnings.catch_warnings():  # arrays from Ray are read-only; we only read them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    if t.dtype == torch.int16:
        t = t.view(torch.bfloat16)
    return t.to(dtype)

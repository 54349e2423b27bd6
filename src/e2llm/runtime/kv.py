"""One stage's KV cache for many sequences at once; sliding-window layers keep only their window.

Layout (as gpt-fast, K and V in one tensor): one pool per attention span, `kv[layer, slot,
2 * kv_heads, position, head_dim]` (K heads first, then V heads), one slot per live sequence.
Full-attention layers store position p at index p; a sliding-window layer of window w is a ring
of w positions and stores p at index p % w, so it never holds more than its window. Capacity and
the number of slots grow by doubling (a ring stops at w), so appending is amortised O(1) copies.
Slots are handed out lowest-first, so a steady decode batch usually occupies consecutive slots and
attention reads the pool through views instead of gathering. Memory stays reserved after
sequences end (reused by the next ones).

`step` prepares one forward pass: for each layer, where its new K/V go, what it attends to, and
the mask. A one-token step attends to the ring as it is (softmax does not care about key order,
and RoPE is already in the keys); a multi-token chunk that runs past the window attends to the
ring's older positions followed by its own keys, under a causal sliding-window mask.

~385 lines: one class; the full-context pool and the sliding-window rings share slots, growth,
export and import, and every write goes through `KVStep`.
"""

from __future__ import annotations

import heapq
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

_INITIAL_CAPACITY = 128
_INITIAL_SLOTS = 2

# (keys, values) [B, kv_heads, L, head_dim], the boolean mask [B, 1, T, L] or None, whether the
# pass is plain causal attention (no mask needed), and for a decode step whose rows have different
# lengths each row's count of visible keys (else None): attention then runs row by row over
# exactly the keys the row alone would see, so a row's result does not depend on its batch (a
# padded, masked batch changes the kernels' summation order: greedy text would flip on near-ties)
Attend = tuple[Tensor, Tensor, Tensor | None, bool, list[int] | None]


# one layer's part of a step: write its new K/V ([B * T, 2 * kv_heads * head_dim]), return what
# to attend to
LayerUpdate = Callable[[Tensor], Attend]


class KVStep:
    """What one forward pass of `rows` sequences x `tokens` new tokens each reads and writes.
    `positions` [rows, tokens] are the new tokens' absolute positions."""

    def __init__(self, rows: int, tokens: int, positions: Tensor, layers: dict[int, LayerUpdate]):
        self.rows, self.tokens, self.positions = rows, tokens, positions
        self._layers = layers

    def update(self, layer: int, kv: Tensor) -> Attend:
        """Store the new K (RoPE applied) and V of global `layer`, rows of [K heads, V heads]."""
        return self._layers[layer](kv)


class KVCache:
    """K/V of global layers `layers` for every sequence held by one stage. `windows` maps a layer
    to its sliding window (absent or 0: full attention)."""

    def __init__(
        self,
        layers: Sequence[int],
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        windows: Mapping[int, int] | None = None,
    ):
        self.layers = tuple(layers)
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self.dtype, self.device = dtype, device
        windows = windows or {}
        groups: dict[int, list[int]] = {}
        for layer in self.layers:
            groups.setdefault(windows.get(layer, 0), []).append(layer)
        # per pool (by window): its layers, and where each layer lives
        self._members = groups
        self._where = {layer: (w, i) for w, ls in groups.items() for i, layer in enumerate(ls)}
        self._pools: dict[int, Tensor] = {}
        self.slots = 0
        self._capacity: dict[int, int] = {}
        self._slot: dict[str, int] = {}
        self._length: dict[str, int] = {}
        self._present: dict[str, set[int]] = {}  # layers holding valid K/V for the sequence
        self._free: list[int] = []
        self._grow(_INITIAL_SLOTS, {w: _cap(w, _INITIAL_CAPACITY) for w in groups})

    # -- bookkeeping -------------------------------------------------------------------------
    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._slot

    @property
    def capacity(self) -> int:
        """Positions a full-attention layer holds per slot (the longest window if none is full)."""
        return self._capacity.get(0, max(self._capacity.values(), default=0))

    def window(self, layer: int) -> int:
        return self._where[layer][0]

    def length(self, seq_id: str) -> int:
        """Tokens cached for `seq_id` (0 for an unknown sequence)."""
        return self._length.get(seq_id, 0)

    def missing_layers(self, seq_id: str) -> list[int]:
        """Owned layers without K/V for `seq_id` (non-empty only while a hand-off is partial)."""
        present = self._present.get(seq_id, set())
        return [layer for layer in self.layers if layer not in present]

    def tokens_held(self, length: int) -> int:
        """Positions summed over the owned layers for a sequence of `length` tokens."""
        return sum(len(ls) * _cap(w, length) for w, ls in self._members.items())

    def used_bytes(self) -> int:
        per_position = 2 * self.n_kv_heads * self.head_dim * self.element_size
        return per_position * sum(self.tokens_held(n) for n in self._length.values())

    def reserved_bytes(self) -> int:
        return sum(p.numel() for p in self._pools.values()) * self.element_size

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def allocate(self, seq_id: str) -> None:
        """Give `seq_id` an empty slot (its length starts at 0, all layers present)."""
        if seq_id in self._slot:
            raise ValueError(f"sequence {seq_id!r} already has KV on this stage")
        if not self._free:
            self._grow(2 * self.slots, self._capacity)
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

    def reserve(self, slots: int, tokens: int) -> None:
        """Hold the pool for `slots` sequences of `tokens` tokens now (the planned load; a ring
        holds min(tokens, window)), so serving it allocates nothing more. An empty cache takes
        exactly that size (not the initial one, which may be more)."""
        if slots <= 0 or tokens <= 0:
            return
        if not self._slot:
            self._pools, self._free, self.slots = {}, [], 0
            self._grow(slots, {w: _cap(w, tokens) for w in self._members})
            return
        want = {w: max(c, _cap(w, tokens)) for w, c in self._capacity.items()}
        if slots > self.slots or want != self._capacity:
            self._grow(max(slots, self.slots), want)

    def _reserve(self, length: int) -> None:
        """Room for sequences of `length` tokens (capacities double; a ring stops at its window)."""
        want = dict(self._capacity)
        for w, c in self._capacity.items():
            while c < _cap(w, length):
                c = _cap(w, 2 * c)
            want[w] = c
        if want != self._capacity:
            self._grow(self.slots, want)

    def _grow(self, slots: int, capacity: Mapping[int, int]) -> None:
        pools = {}
        for w, layers in self._members.items():
            shape = (len(layers), slots, 2 * self.n_kv_heads, capacity[w], self.head_dim)
            pool = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if (old := self._pools.get(w)) is not None:  # a ring grows only before it wraps
                pool[:, : old.shape[1], :, : old.shape[3]] = old
            pools[w] = pool
        self._pools = pools  # the old pools go here, before anything else is allocated
        self._capacity = dict(capacity)
        for slot in range(self.slots, slots):
            heapq.heappush(self._free, slot)
        self.slots = slots

    # -- one forward pass ----------------------------------------------------------------------
    def step(self, seq_ids: Sequence[str], tokens: int) -> KVStep:
        """Prepare a pass that appends `tokens` tokens to each of `seq_ids` (more than one token:
        one sequence, a prefill chunk). The caller advances the lengths afterwards."""
        lengths = [self._length[s] for s in seq_ids]
        if tokens > 1 and len(seq_ids) != 1:
            raise ValueError(f"a step of {tokens} tokens takes one sequence, got {len(seq_ids)}")
        self._reserve(max(lengths) + tokens)
        slots = [self._slot[s] for s in seq_ids]
        span = (
            slice(slots[0], slots[-1] + 1) if all(b == a + 1 for a, b in itertools.pairwise(slots)) else None
        )
        starts = torch.tensor(lengths, device=self.device)
        positions = starts[:, None] + torch.arange(tokens, device=self.device)
        layers: dict[int, LayerUpdate] = {}
        for w, members in self._members.items():
            pool = self._pools[w]
            if tokens == 1:
                updates = self._one_token(pool, w, lengths, slots, span, starts)
            else:
                updates = self._chunk(pool, w, lengths[0], tokens, slots[0], positions)
            layers |= dict(zip(members, updates, strict=True))
        return KVStep(len(seq_ids), tokens, positions, layers)

    def _one_token(
        self,
        pool: Tensor,
        w: int,
        lengths: list[int],
        slots: list[int],
        span: slice | None,
        starts: Tensor,
    ) -> list[LayerUpdate]:
        """Decode: row b writes position p_b at index p_b (mod w) and reads the first
        L = max p + 1 indices (at most w). In a ring every index below min(p_b + 1, w) holds one
        of the last w positions, so row b sees exactly its first min(p_b + 1, w) indices."""
        h, b = self.n_kv_heads, len(lengths)
        length = _cap(w, max(lengths) + 1)
        visible = [_cap(w, n + 1) for n in lengths]
        rows_visible = visible if min(visible) < length else None
        if span is not None and len(set(lengths)) == 1:  # block writes and views only
            at = _index(w, lengths[0])
            dst = pool[:, span, :, at : at + 1].unbind(0)
            keys, values = pool[:, span, :h, :length].unbind(0), pool[:, span, h:, :length].unbind(0)

            def make(i: int) -> LayerUpdate:
                def update(kv: Tensor) -> Attend:
                    dst[i].copy_(kv.view(b, 2 * h, 1, -1))
                    return keys[i], values[i], None, False, rows_visible

                return update

            return [make(i) for i in range(pool.shape[0])]
        rows = torch.tensor(slots, device=self.device)
        at_t = starts % w if w else starts

        def make_scatter(i: int) -> LayerUpdate:
            layer_pool = pool[i]

            def update(kv: Tensor) -> Attend:
                layer_pool[rows, :, at_t] = kv.view(b, 2 * h, -1).to(self.dtype)
                read = layer_pool[span, :, :length] if span is not None else layer_pool[rows, :, :length]
                return read[:, :h], read[:, h:], None, False, rows_visible

            return update

        return [make_scatter(i) for i in range(pool.shape[0])]

    def _chunk(
        self, pool: Tensor, w: int, start: int, tokens: int, slot: int, positions: Tensor
    ) -> list[LayerUpdate]:
        """A chunk of one sequence at positions [start, start + tokens)."""
        h, end = self.n_kv_heads, start + tokens
        if not w or end <= w:  # nothing leaves the window: plain causal attention over [0, end)
            mask = None if start == 0 else _visible(torch.arange(end, device=self.device), positions, 0)
            dst = pool[:, slot, :, start:end].unbind(0)
            read = pool[:, slot : slot + 1, :, :end].unbind(0)

            def make(i: int) -> LayerUpdate:
                def update(kv: Tensor) -> Attend:
                    dst[i].copy_(kv.view(tokens, 2 * h, -1).transpose(0, 1))
                    return read[i][:, :h], read[i][:, h:], mask, start == 0, None

                return update

            return [make(i) for i in range(pool.shape[0])]
        # the ring's positions the chunk's first query still sees, then the chunk itself
        old = torch.arange(max(0, start - w + 1), start, device=self.device)
        mask = _visible(torch.cat((old, positions[0])), positions, w)
        kept = torch.arange(max(start, end - w), end, device=self.device)  # what the ring keeps
        old_at, kept_at = old % w, kept % w

        def make_ring(i: int) -> LayerUpdate:
            layer_pool = pool[i, slot]

            def update(kv: Tensor) -> Attend:
                new = kv.view(tokens, 2 * h, -1).transpose(0, 1).to(self.dtype)
                both = torch.cat((layer_pool[:, old_at], new), 1)[None]  # read before overwriting
                layer_pool[:, kept_at] = new[:, tokens - len(kept) :]
                return both[:, :h], both[:, h:], mask, False, None

            return update

        return [make_ring(i) for i in range(pool.shape[0])]

    # -- hand-off ------------------------------------------------------------------------------
    def export(self, seq_id: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Copies of the present layers' K/V, global layer -> (k, v), each [kv_heads, T, head_dim],
        in position order: T = the sequence's length, or for a sliding layer its last
        min(length, window) positions.

        numpy has no bfloat16: bf16 caches export their raw bits as int16 arrays.
        """
        slot, n, h = self._slot[seq_id], self._length[seq_id], self.n_kv_heads
        out = {}
        for layer in sorted(self._present[seq_id]):
            w, i = self._where[layer]
            kept = _cap(w, n)
            at = _ring_order(w, n, kept, self.device)
            both = self._pools[w][i, slot][:, at]
            out[layer] = (_to_numpy(both[:h]), _to_numpy(both[h:]))
        return out

    def import_(self, seq_id: str, kv: Mapping[int, tuple[np.ndarray, np.ndarray]], length: int) -> list[int]:
        """Copy in the owned layers found in `kv` (others are ignored); returns the layers taken.
        A layer's arrays hold its last T positions, T between what the layer keeps (all `length`,
        or a sliding layer's min(length, window)) and `length`.

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
        slot, h = self._slot[seq_id], self.n_kv_heads
        taken = []
        for layer, (k, v) in kv.items():
            if layer not in self._where:
                continue
            w, i = self._where[layer]
            kept = _cap(w, length)
            for arr in (k, v):
                if arr.ndim != 3 or arr.shape[0] != h or arr.shape[2] != self.head_dim:
                    raise ValueError(f"KV import for {seq_id!r} layer {layer}: shape {arr.shape}")
                if not kept <= arr.shape[1] <= length:
                    raise ValueError(
                        f"KV import for {seq_id!r} layer {layer}: {arr.shape[1]} positions for "
                        f"length {length} (window {w or 'none'})"
                    )
            at = _ring_order(w, length, kept, self.device)
            layer_pool = self._pools[w][i, slot]
            layer_pool[:h, at] = _from_numpy(k[:, k.shape[1] - kept :], self.dtype).to(self.device)
            layer_pool[h:, at] = _from_numpy(v[:, v.shape[1] - kept :], self.dtype).to(self.device)
            self._present[seq_id].add(layer)
            taken.append(layer)
        return taken


def _cap(window: int, tokens: int) -> int:
    """Positions a layer of `window` (0: full) keeps for `tokens` tokens."""
    return min(tokens, window) if window else tokens


def _ring_order(window: int, length: int, kept: int, device: torch.device) -> Tensor | slice:
    """Indices of a layer's last `kept` positions of `length`, in position order."""
    if window and length > window:
        return torch.arange(length - kept, length, device=device) % window
    return slice(0, kept)


def _index(window: int, position: int) -> int:
    return position % window if window else position


def _visible(keys: Tensor, queries: Tensor, window: int) -> Tensor:
    """Boolean [1, 1, T, L]: key position k is visible to query position q iff k <= q (and
    q - k < window when the layer slides); `keys` [L], `queries` [1, T]."""
    mask = keys[None, :] <= queries[0, :, None]
    if window:
        mask &= keys[None, :] > queries[0, :, None] - window
    return mask[None, None]


def _to_numpy(t: Tensor) -> np.ndarray:
    t = t.detach().to("cpu", copy=True).contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def _from_numpy(arr: np.ndarray, dtype: torch.dtype) -> Tensor:
    with warnings.catch_warnings():  # arrays from Ray are read-only; we only read them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.int16:
        t = t.view(torch.bfloat16)
    return t.to(dtype)

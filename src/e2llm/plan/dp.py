"""Layer partition of one replica: which contiguous layers each device of an ordered group runs.

`partition_layers` is the method's "DP Pipe", exact: it minimises the bottleneck (the slowest
stage's time, a stage being one device's layers plus the hop that feeds it) over every split of
the model's L layers into K contiguous, non-empty ranges in the group's (pipeline) order, subject
to every device's memory. Every device of a group gets at least one layer: a device the plan does
not use is never hidden inside a replica, it is listed in `Plan.unused_devices` instead.

The costs arrive as per-device scalars (`StageCosts`): the per-layer time is the same for every
layer of a model (layers are identical), so a stage of n layers on device k costs
`n * layer_s[k] + fixed_s[k]`, where `fixed_s` holds what the device pays whatever its layer
count: the incoming hop, the embedding on the first device and the LM head on the last. Memory is
per layer (`layer_bytes`: weights plus KV, which differs between sliding-window and full-attention
layers), so a range's bytes come from prefix sums.

Recurrence (F[k][i]: best bottleneck with layers [0, i) on the first k devices):
    F[k][i] = min over j < i of max(F[k-1][j], (i - j) * layer_s[k] + fixed_s[k]),
restricted to ranges [j, i) that fit device k. It runs as K vectorised (L+1)x(L+1) numpy steps,
O(K·L²) work, well under a millisecond for 80 layers on a few devices, and batches several
instances of one group (every decode concurrency) into the same steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np


@dataclass(frozen=True, slots=True)
class StageCosts:
    """One ordered device group, one phase. Seconds and bytes; tuples indexed by pipeline position.

    `free_bytes[k]` is device k's memory minus what it needs whatever its layers (runtime overhead,
    plus embedding / LM-head weights if it holds them); it may be negative (nothing fits).
    `layer_bytes[i]` is what decoder layer i needs on whichever device runs it.
    `memory_bytes[k]` is device k's whole memory (used only by the proportional split).
    """

    layer_s: tuple[float, ...]
    fixed_s: tuple[float, ...]
    free_bytes: tuple[float, ...]
    layer_bytes: tuple[float, ...]
    memory_bytes: tuple[float, ...] = ()

    @property
    def n_devices(self) -> int:
        return len(self.layer_s)

    @property
    def n_layers(self) -> int:
        return len(self.layer_bytes)

    def stage_s(self, counts: Sequence[int]) -> tuple[float, ...]:
        return tuple(n * a + x for n, a, x in zip(counts, self.layer_s, self.fixed_s, strict=True))

    def fits(self, counts: Sequence[int]) -> bool:
        """Whether every device holds its range (counts in pipeline order, summing to L)."""
        if sum(counts) != self.n_layers:
            return False
        prefix = list(accumulate(self.layer_bytes, initial=0.0))  # same sums as the DP's
        start = 0
        for n, free in zip(counts, self.free_bytes, strict=True):
            if n < 1 or prefix[start + n] - prefix[start] > free:
                return False
            start += n
        return True


@dataclass(frozen=True, slots=True)
class Partition:
    """Layer counts per device in pipeline order, and the resulting stage times (seconds)."""

    counts: tuple[int, ...]
    stage_s: tuple[float, ...]

    @property
    def bottleneck_s(self) -> float:
        return max(self.stage_s)

    @property
    def bottleneck_index(self) -> int:
        return max(range(len(self.stage_s)), key=lambda k: self.stage_s[k])

    @property
    def total_s(self) -> float:
        """Time one item takes to traverse the whole pipeline."""
        return sum(self.stage_s)

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """Half-open `[start, end)` layer range of each device."""
        out, start = [], 0
        for n in self.counts:
            out.append((start, start + n))
            start += n
        return tuple(out)


def partition_layers(costs: StageCosts) -> Partition | None:
    """Exact minimum-bottleneck, memory-feasible split; None when no split fits (e.g. K > L)."""
    return partition_layers_many([costs])[0]


def partition_layers_many(batch: Sequence[StageCosts]) -> list[Partition | None]:
    """`partition_layers` of several instances of one group shape (same K and L, e.g. one group
    at every decode concurrency) in one vectorised pass: the numpy call count, which dominates
    at these sizes, is that of a single instance."""
    if not batch:
        return []
    k_dev, n_layers = batch[0].n_devices, batch[0].n_layers
    if any(c.n_devices != k_dev or c.n_layers != n_layers for c in batch):
        raise ValueError("partition_layers_many needs instances with the same devices and layers")
    if k_dev == 0 or k_dev > n_layers:
        return [None] * len(batch)
    if k_dev == 1:
        return [
            Partition((n_layers,), c.stage_s((n_layers,))) if c.fits((n_layers,)) else None for c in batch
        ]
    if k_dev == 2:
        return [_two_stages(c) for c in batch]
    out = [_uniform_layers(c) for c in batch]
    todo = [i for i, part in enumerate(out) if part is _GENERAL]
    if todo:
        for i, part in zip(todo, _dp_numpy([batch[i] for i in todo]), strict=True):
            out[i] = part
    return [None if p is _GENERAL else p for p in out]


_GENERAL = Partition((), ())  # marker: the instance needs the general recurrence


def _uniform_layers(costs: StageCosts) -> Partition | None:
    """Dense models (every layer the same bytes): a device's memory caps its layer COUNT wherever
    the range sits, so the problem is: the least T such that every device can take
    n_k(T) = min(cap_k, max n with n * layer_s + fixed_s <= T) >= 1 layers and these sum to >= L.
    T is one of the K*L stage times; the count sum grows with T, so bisect the sorted candidates:
    O(K·L·log(K·L)) in plain Python (faster than numpy at these sizes), no L x L table. Among
    the splits with that bottleneck it returns the one with the least total time (layers go to
    the fastest devices first). Returns `_GENERAL` when the layers differ or a memory cap sits
    within float noise of a whole layer count."""
    w = costs.layer_bytes[0]
    if w <= 0 or min(costs.layer_s) <= 0 or any(b != w for b in costs.layer_bytes):
        return _GENERAL
    n_layers = costs.n_layers
    caps = []
    for free in costs.free_bytes:
        ratio = free / w
        if abs(ratio - round(ratio)) < 1e-9 * max(1.0, abs(ratio)):
            return _GENERAL  # the prefix-sum check could round either way here
        caps.append(min(n_layers, math.floor(ratio)))
    if min(caps) < 1 or sum(caps) < n_layers:
        return None
    pairs = list(zip(costs.layer_s, costs.fixed_s, caps, strict=True))

    def most(a: float, x: float, cap: int, t: float) -> int:
        """Most layers (<= cap) a device runs within t: float division, then corrected exactly."""
        n = min(cap, max(0, math.floor((t - x) / a)))
        while n < cap and (n + 1) * a + x <= t:
            n += 1
        while n > 0 and n * a + x > t:
            n -= 1
        return n

    def enough(t: float) -> bool:
        counts = [most(a, x, cap, t) for a, x, cap in pairs]
        return min(counts) >= 1 and sum(counts) >= n_layers

    cands = sorted({n * a + x for a, x, cap in pairs for n in range(1, cap + 1)})
    if not enough(cands[-1]):
        return None
    lo, hi = 0, len(cands) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(cands[mid]):
            hi = mid
        else:
            lo = mid + 1
    limit = [most(a, x, cap, cands[lo]) for a, x, cap in pairs]
    counts = [1] * len(pairs)
    spare = n_layers - len(pairs)
    for k in sorted(range(len(pairs)), key=lambda k: (pairs[k][0], k)):  # fastest per layer first
        extra = min(spare, limit[k] - 1)
        counts[k] += extra
        spare -= extra
    result = tuple(counts)
    if not costs.fits(result):
        return _GENERAL
    return Partition(result, costs.stage_s(result))


def _dp_numpy(batch: Sequence[StageCosts]) -> list[Partition | None]:
    """The recurrence, vectorised over instances, start points and end points."""
    k_dev, n_layers = batch[0].n_devices, batch[0].n_layers
    n_b = len(batch)
    layer_s = np.array([c.layer_s for c in batch])[:, :, None, None]  # (B, K, 1, 1)
    fixed_s = np.array([c.fixed_s for c in batch])[:, :, None, None]
    free = np.array([c.free_bytes for c in batch])[:, :, None, None]
    prefix = np.cumsum(np.array([(0.0, *c.layer_bytes) for c in batch]), axis=1)  # same sums as `fits`
    range_bytes = prefix[:, None, :] - prefix[:, :, None]  # (B, j, i): bytes of layers [j, i)
    n = _layer_counts(n_layers)  # (j, i): layers in [j, i)
    # every device's time for every range at once, inf where the range is empty or does not fit
    ok = (n >= 1) & (range_bytes[:, None] <= free)  # (B, K, j, i)
    stage = np.where(ok, n * layer_s + fixed_s, np.inf)
    rows = np.arange(n_b)[:, None]
    cols = np.arange(n_layers + 1)[None, :]
    best = np.full((n_b, n_layers + 1), np.inf)
    best[:, 0] = 0.0
    choices = []
    for k in range(k_dev):
        cand = np.maximum(best[:, :, None], stage[:, k])
        arg = cand.argmin(axis=1)  # (B, i): best start j of the range ending at i
        best = cand[rows, arg, cols]
        choices.append(arg)
    out: list[Partition | None] = []
    for b, costs in enumerate(batch):
        if not np.isfinite(best[b, n_layers]):
            out.append(None)
            continue
        counts_rev, end = [], n_layers
        for k in range(k_dev - 1, -1, -1):
            start = int(choices[k][b, end])
            counts_rev.append(end - start)
            end = start
        counts = tuple(reversed(counts_rev))
        out.append(Partition(counts, costs.stage_s(counts)))
    return out


def _two_stages(costs: StageCosts) -> Partition | None:
    """K = 2 (the commonest multi-device replica): scan the L-1 cut points in plain Python, which
    beats the numpy steps at this size. Same result as the general DP, ties to the first cut."""
    n_layers = costs.n_layers
    prefix = list(accumulate(costs.layer_bytes, initial=0.0))
    (a0, a1), (x0, x1), (f0, f1) = costs.layer_s, costs.fixed_s, costs.free_bytes
    best_cut, best_s = 0, math.inf
    for cut in range(1, n_layers):
        if prefix[cut] > f0:
            break  # the first device's range only grows
        if prefix[n_layers] - prefix[cut] > f1:
            continue
        t = max(cut * a0 + x0, (n_layers - cut) * a1 + x1)
        if t < best_s:
            best_cut, best_s = cut, t
    if not best_cut:
        return None
    counts = (best_cut, n_layers - best_cut)
    return Partition(counts, costs.stage_s(counts))


@functools.cache
def _layer_counts(n_layers: int) -> np.ndarray:
    idx = np.arange(n_layers + 1)
    return idx[None, :] - idx[:, None]


def proportional_partition(costs: StageCosts) -> Partition | None:
    """Layers in proportion to device memory (what exo and llama.cpp RPC do), largest remainder
    rounding, at least one layer each; None if that split does not fit in memory.

    No search: the split ignores speed and links, which is the point of this baseline.
    """
    k_dev, n_layers = costs.n_devices, costs.n_layers
    if k_dev == 0 or k_dev > n_layers:
        return None
    weights = costs.memory_bytes or costs.free_bytes
    total = sum(weights)
    if total <= 0:
        return None
    # one layer each first, the rest by share: keeps every device in the pipeline.
    spare = n_layers - k_dev
    shares = [spare * w / total for w in weights]
    counts = [1 + math.floor(s) for s in shares]
    order = sorted(range(k_dev), key=lambda k: (-(shares[k] - math.floor(shares[k])), k))
    for k in order[: n_layers - sum(counts)]:
        counts[k] += 1
    result = tuple(counts)
    return Partition(result, costs.stage_s(result)) if costs.fits(result) else None


def proportional_partition_many(batch: Sequence[StageCosts]) -> list[Partition | None]:
    return [proportional_partition(c) for c in batch]

"""Layer partition of one replica: which contiguous layers each device of an ordered group runs.

`partition_layers` is the method's "DP Pipe", exact: it minimises the bottleneck (the slowest
stage's time, a stage being one device's layers plus the hop that feeds it) over every split of
the model's L layers into K contiguous, non-empty ranges in the group's (pipeline) order, subject
to every device's memory. Every device of a group gets at least one layer: a device the plan does
not use is never hidden inside a replica, it is listed in `Plan.unused_devices` instead.

The costs arrive as per-device scalars (`StageCosts`): the per-layer time is the same for every
layer of a model (layers are identical), so a stage of n layers on device k costs
`max(n * layer_s[k] + fixed_s[k], n * kv_s[k])`, where `fixed_s` holds what the device pays
whatever its layer count (the incoming hop, the embedding on the first device and the LM head on
the last) and `kv_s` is the time its network port needs for the KV cache of one layer (a prefill
device ships it to the decoders, a decoder device receives it; 0 without a hand-off). The port
works beside the compute, so it is a second resource of the stage rather than added time: a
split may give a well-connected device more layers than its speed alone would. Memory is
per layer (`layer_bytes`: weights plus KV, which differs between sliding-window and full-attention
layers), so a range's bytes come from prefix sums.

Recurrence (F[k][i]: best bottleneck with layers [0, i) on the first k devices):
    F[k][i] = min over j < i of max(F[k-1][j], stage time of layers [j, i) on device k),
restricted to ranges [j, i) that fit device k. It runs as K vectorised (L+1)x(L+1) numpy steps,
O(K·L²) work, well under a millisecond for 80 layers on a few devices, and batches several
instances of one group (every decode concurrency) into the same steps.

~340 lines: the exact DP, its uniform-layer fast path and the proportional baseline split share
`StageCosts` and `Partition` and are tested against each other.
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
    `kv_s[k]` is device k's network-port seconds per layer of KV hand-off; empty: none.
    """

    layer_s: tuple[float, ...]
    fixed_s: tuple[float, ...]
    free_bytes: tuple[float, ...]
    layer_bytes: tuple[float, ...]
    memory_bytes: tuple[float, ...] = ()
    kv_s: tuple[float, ...] = ()

    @property
    def n_devices(self) -> int:
        return len(self.layer_s)

    @property
    def n_layers(self) -> int:
        return len(self.layer_bytes)

    def stage_s(self, counts: Sequence[int]) -> tuple[float, ...]:
        """Compute (and incoming hop) seconds of each stage."""
        return tuple(n * a + x for n, a, x in zip(counts, self.layer_s, self.fixed_s, strict=True))

    def port_s(self, counts: Sequence[int]) -> tuple[float, ...]:
        """KV hand-off seconds of each stage's port (zeros without a hand-off)."""
        return tuple(n * e for n, e in zip(counts, self.kv_s, strict=True)) if self.kv_s else ()

    def partition(self, counts: Sequence[int]) -> Partition:
        counts = tuple(counts)
        return Partition(counts, self.stage_s(counts), self.port_s(counts))

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
    """Layer counts per device in pipeline order, the resulting stage times (seconds), and the
    KV hand-off seconds of each stage's port (empty without a hand-off)."""

    counts: tuple[int, ...]
    stage_s: tuple[float, ...]
    port_s: tuple[float, ...] = ()

    @property
    def compute_bottleneck_s(self) -> float:
        return max(self.stage_s)

    @property
    def bottleneck_s(self) -> float:
        """The slowest resource: a stage's compute or its port."""
        return max(self.compute_bottleneck_s, max(self.port_s, default=0.0))

    @property
    def bottleneck_index(self) -> int:
        ports = self.port_s or (0.0,) * len(self.stage_s)
        return max(range(len(self.stage_s)), key=lambda k: max(self.stage_s[k], ports[k]))

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
        return [c.partition((n_layers,)) if c.fits((n_layers,)) else None for c in batch]
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
    n_k(T) = min(cap_k, max n whose stage time is <= T) >= 1 layers and these sum to >= L.

    The count sum f(T) only grows with T. Its continuous relaxation g(T) (no rounding down) is a
    sum of concave piecewise-linear pieces, solved exactly for g(T0) = L from its <= 2K
    breakpoints; f(T0) >= L - K since each device loses less than one layer to rounding, so
    stepping up from T0 to each next stage time (the least time at which some device takes one
    more layer) reaches the optimum T* in at most K steps: O(K^2) per instance, no candidate list
    and no L x L table. Among the splits with that bottleneck it returns the one with the least
    total time (layers go to the fastest devices first). Returns `_GENERAL` when the layers differ
    or a memory cap sits within float noise of a whole layer count."""
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
    ports = costs.kv_s or (0.0,) * costs.n_devices
    devs = list(zip(costs.layer_s, costs.fixed_s, ports, caps, strict=True))

    def time_of(n: int, a: float, x: float, e: float) -> float:
        return max(n * a + x, n * e)

    def most(a: float, x: float, e: float, cap: int, t: float) -> int:
        """Most layers (<= cap) a device runs within t: float division, then corrected exactly."""
        n = min(cap, max(0, math.floor((t - x) / a)))
        if e > 0:
            n = min(n, max(0, math.floor(t / e)))
        while n < cap and time_of(n + 1, a, x, e) <= t:
            n += 1
        while n > 0 and time_of(n, a, x, e) > t:
            n -= 1
        return n

    t_min = max(time_of(1, a, x, e) for a, x, e, _ in devs)  # every device takes a layer
    t = max(t_min, _relaxed_time(devs, n_layers) * (1 - 1e-12))
    counts = [most(a, x, e, cap, t) for a, x, e, cap in devs]
    if t > t_min and sum(counts) >= n_layers:  # float noise put t past the optimum: walk up instead
        t = t_min
        counts = [most(a, x, e, cap, t) for a, x, e, cap in devs]
    while sum(counts) < n_layers:
        t = min(time_of(n + 1, a, x, e) for n, (a, x, e, cap) in zip(counts, devs, strict=True) if n < cap)
        counts = [most(a, x, e, cap, t) for a, x, e, cap in devs]
    limit = counts
    counts = [1] * len(devs)
    spare = n_layers - len(devs)
    for k in sorted(range(len(devs)), key=lambda k: (devs[k][0], k)):  # fastest per layer first
        extra = min(spare, limit[k] - 1)
        counts[k] += extra
        spare -= extra
    if not costs.fits(counts):
        return _GENERAL
    return costs.partition(counts)


def _relaxed_time(devs: Sequence[tuple[float, float, float, int]], n_layers: int) -> float:
    """The least T with sum_k min(cap_k, (T - x_k) / a_k, T / e_k) >= L (counts not rounded,
    not floored at 0): a lower bound of the optimum, from the breakpoints of the concave pieces."""

    def g(t: float) -> float:
        total = 0.0
        for a, x, e, cap in devs:
            n = min(cap, (t - x) / a)
            total += min(n, t / e) if e > 0 else n
        return total

    points = set()
    for a, x, e, cap in devs:
        points.add(cap * a + x)  # compute line meets the cap
        if e > 0:
            points.add(cap * e)  # port line meets the cap
            if e > a:
                points.add(x * e / (e - a))  # the port line overtakes the compute line
    lo = min(x for _, x, _, _ in devs)
    g_lo = g(lo)
    for p in sorted(points):
        if p <= lo:
            continue
        g_p = g(p)
        if g_p >= n_layers:
            return lo + (p - lo) * (n_layers - g_lo) / (g_p - g_lo) if g_p > g_lo else p
        lo, g_lo = p, g_p
    return lo


def _dp_numpy(batch: Sequence[StageCosts]) -> list[Partition | None]:
    """The recurrence, vectorised over instances, start points and end points."""
    k_dev, n_layers = batch[0].n_devices, batch[0].n_layers
    n_b = len(batch)
    layer_s = np.array([c.layer_s for c in batch])[:, :, None, None]  # (B, K, 1, 1)
    fixed_s = np.array([c.fixed_s for c in batch])[:, :, None, None]
    port_s = np.array([c.kv_s or (0.0,) * k_dev for c in batch])[:, :, None, None]
    free = np.array([c.free_bytes for c in batch])[:, :, None, None]
    prefix = np.cumsum(np.array([(0.0, *c.layer_bytes) for c in batch]), axis=1)  # same sums as `fits`
    range_bytes = prefix[:, None, :] - prefix[:, :, None]  # (B, j, i): bytes of layers [j, i)
    n = _layer_counts(n_layers)  # (j, i): layers in [j, i)
    # every device's time for every range at once, inf where the range is empty or does not fit
    ok = (n >= 1) & (range_bytes[:, None] <= free)  # (B, K, j, i)
    stage = np.where(ok, np.maximum(n * layer_s + fixed_s, n * port_s), np.inf)
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
        out.append(costs.partition(counts_rev[::-1]))
    return out


def _two_stages(costs: StageCosts) -> Partition | None:
    """K = 2 (the commonest multi-device replica): scan the L-1 cut points in plain Python, which
    beats the numpy steps at this size. Same result as the general DP, ties to the first cut."""
    n_layers = costs.n_layers
    prefix = list(accumulate(costs.layer_bytes, initial=0.0))
    (a0, a1), (x0, x1), (f0, f1) = costs.layer_s, costs.fixed_s, costs.free_bytes
    e0, e1 = costs.kv_s or (0.0, 0.0)
    best_cut, best_s = 0, math.inf
    for cut in range(1, n_layers):
        if prefix[cut] > f0:
            break  # the first device's range only grows
        if prefix[n_layers] - prefix[cut] > f1:
            continue
        rest = n_layers - cut
        t = max(cut * a0 + x0, cut * e0, rest * a1 + x1, rest * e1)
        if t < best_s:
            best_cut, best_s = cut, t
    if not best_cut:
        return None
    return costs.partition((best_cut, n_layers - best_cut))


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
    return costs.partition(counts) if costs.fits(counts) else None


def proportional_partition_many(batch: Sequence[StageCosts]) -> list[Partition | None]:
    return [proportional_partition(c) for c in batch]

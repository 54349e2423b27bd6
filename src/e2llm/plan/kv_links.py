"""KV hand-off capacity of a PREFILL -> DECODER replica pair over the links their devices use.

After a prompt, each layer's KV goes from the prefill device that computed it to the decoder
device that owns that layer (the two replicas may cut the layers differently), every
intersecting range over its own device pair's link, all in parallel (`sim.simulator`). The pair
therefore carries at most `min over intersecting ranges of bandwidth / bytes` prompts per second,
which is what `KvLinks.capacity` returns; `roles` turns it into a cap on each prefill replica's
rate given the decoders it hands off to.

Computing every pair of a large cluster for every GA individual would dominate planning, so
`matrix` first screens each prefill replica with a bound that needs no partner: no link from
device a carries more of a prompt than a's own layers' KV, over no link slower than a's slowest,
so `min over a of slowest_bw(a) / bytes(a)` bounds every pair from below. Where that bound is
already above the replica's own prefill rate, its pairs can never bind and are not computed.
The pairs that remain are computed in one numpy pass over every (prefill stage, decoder stage)
couple of the replicas asked, from a table of the bytes of every layer range and one of every
device pair's bandwidth: the same divisions as `capacity`, so the same numbers, without a Python
loop per pair (a 256-device plan asks for tens of thousands of pairs per GA individual).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from e2llm.cost.model import CostModel

# one device's share of a replica: (device, first layer, end layer), in pipeline order
Stages = tuple[tuple[str, int, int], ...]


class KvLinks:
    """Pair capacities (prompts/s) for one cost model and prompt length."""

    def __init__(self, cost: CostModel, prompt_tokens: float):
        self.cost = cost
        self._tokens = max(1, round(prompt_tokens))
        cl = cost.cluster
        names = cl.names
        self._index = {n: k for k, n in enumerate(names)}
        # Mbit/s of every device pair's link (inf on the diagonal: a device sends itself nothing)
        link_mbps = [[cl.link(a, b).bandwidth_mbps if a != b else math.inf for b in names] for a in names]
        mbps = np.array(link_mbps)
        self._slowest = {n: float(v) for n, v in zip(names, mbps.min(axis=1), strict=True)}
        self._bandwidth = mbps * 1e6 / 8
        n_layers = cost.model.n_layers
        # bytes of layers [lo, hi) of one prompt, 0 where the range is empty
        self._range_bytes = np.array(
            [
                [self._bytes(lo, hi) if lo < hi else 0.0 for hi in range(n_layers + 1)]
                for lo in range(n_layers + 1)
            ]
        )
        self._floors: dict[int, float] = {}  # by the callers' replica keys
        self._arrays: dict[tuple[int, bool], np.ndarray] = {}

    def _bytes(self, start: int, end: int) -> float:
        return self.cost.kv_bytes(start, end, self._tokens)

    def capacity(self, prefill: Stages, decoder: Stages) -> float:
        """Prompts per second the links from `prefill`'s devices to `decoder`'s carry."""
        cap = math.inf
        for a, s0, e0 in prefill:
            for b, s1, e1 in decoder:
                lo, hi = max(s0, s1), min(e0, e1)
                if lo < hi and a != b:
                    n_bytes = self._bytes(lo, hi)
                    if n_bytes > 0:
                        bw = self.cost.cluster.link(a, b).bandwidth_mbps * 1e6 / 8
                        cap = min(cap, bw / n_bytes)
        return cap

    def floor(self, prefill: Stages) -> float:
        """A lower bound of `capacity(prefill, d)` for every decoder d."""
        return min(
            (self._slowest[a] * 1e6 / 8 / b if (b := self._bytes(s, e)) > 0 else math.inf)
            for a, s, e in prefill
        )

    def matrix(
        self,
        replicas: Sequence[Handoff],
        rows: Iterable[int] | None = None,
        cols: Iterable[int] | None = None,
    ) -> np.ndarray | None:
        """kv[i, j]: replica i as PREFILL to replica j as DECODER, for the `rows` and `cols` asked
        (default all; inf elsewhere, where it cannot bind or j cannot decode); None when the
        floor shows that none of the rows can bind, whatever it pairs with."""
        n = len(replicas)
        binding = []
        for i in range(n) if rows is None else rows:
            r = replicas[i]
            if r.key not in self._floors:
                self._floors[r.key] = self.floor(r.prefill)
            if self._floors[r.key] < r.prefill_rps:
                binding.append(i)
        if not binding:
            return None
        columns = [j for j in (range(n) if cols is None else cols) if replicas[j].decoder is not None]
        kv = np.full((n, n), np.inf)
        if columns:
            kv[np.ix_(binding, columns)] = self._block(
                [self._stage_array(replicas[i], True) for i in binding],
                [self._stage_array(replicas[j], False) for j in columns],
            )
            kv[np.arange(n), np.arange(n)] = np.inf  # no replica hands off to itself
        return kv

    def _stage_array(self, r: Handoff, prefill: bool) -> np.ndarray:
        """(device index, first layer, end layer) of each stage, (3, K), cached by key."""
        key = (r.key, prefill)
        if key not in self._arrays:
            stages = r.prefill if prefill else r.decoder
            assert stages is not None
            self._arrays[key] = np.array(
                [[self._index[n] for n, _, _ in stages], [a for _, a, _ in stages], [b for _, _, b in stages]]
            )
        return self._arrays[key]

    def _block(self, prefill: list[np.ndarray], decoder: list[np.ndarray]) -> np.ndarray:
        """`capacity` of every (prefill, decoder) pair of the lists at once."""
        p, d = np.concatenate(prefill, axis=1), np.concatenate(decoder, axis=1)
        lo = np.maximum(p[1][:, None], d[1][None, :])
        hi = np.minimum(p[2][:, None], d[2][None, :])
        live = (lo < hi) & (p[0][:, None] != d[0][None, :])
        n_bytes = self._range_bytes[np.where(live, lo, 0), np.where(live, hi, 0)]
        live &= n_bytes > 0
        bw = self._bandwidth[p[0][:, None], d[0][None, :]]
        with np.errstate(divide="ignore"):
            cap = np.where(live, bw / np.where(live, n_bytes, 1.0), np.inf)
        rows = np.cumsum([0] + [a.shape[1] for a in prefill[:-1]])
        cols = np.cumsum([0] + [a.shape[1] for a in decoder[:-1]])
        return np.minimum.reduceat(np.minimum.reduceat(cap, rows, axis=0), cols, axis=1)


@dataclass(frozen=True, slots=True)
class Handoff:
    """One replica as the hand-off sees it."""

    key: int  # unique per replica (its devices in order): the caches' key
    prefill: Stages  # its devices and layers as PREFILL
    decoder: Stages | None  # ... as DECODER; None: it cannot decode
    prefill_rps: float  # its own prefill rate (a pair below it may bind)


def stages_of(group: Sequence[str], ranges: Sequence[tuple[int, int]]) -> Stages:
    return tuple((name, a, b) for name, (a, b) in zip(group, ranges, strict=True))

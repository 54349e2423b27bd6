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
    """Pair capacities (prompts/s) for one cost model and prompt length, cached by stages."""

    def __init__(self, cost: CostModel, prompt_tokens: float):
        self.cost = cost
        self._tokens = max(1, round(prompt_tokens))
        cl = cost.cluster
        self._slowest = {
            n: min((cl.link(n, o).bandwidth_mbps for o in cl.names if o != n), default=math.inf)
            for n in cl.names
        }
        self._pairs: dict[tuple[int, int], float] = {}  # by the callers' replica keys
        self._floors: dict[int, float] = {}

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
        floor shows that none of the rows can bind, whatever it pairs with. Cached by the
        replicas' keys."""
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
        pairs = self._pairs
        for i in binding:
            pre = replicas[i]
            for j in columns:
                if j != i:
                    dec = replicas[j]
                    key = (pre.key, dec.key)
                    cap = pairs.get(key)
                    if cap is None:
                        cap = pairs[key] = self.capacity(pre.prefill, dec.decoder)  # type: ignore[arg-type]
                    kv[i, j] = cap
        return kv


@dataclass(frozen=True, slots=True)
class Handoff:
    """One replica as the hand-off sees it."""

    key: int  # unique per replica (its devices in order): the caches' key
    prefill: Stages  # its devices and layers as PREFILL
    decoder: Stages | None  # ... as DECODER; None: it cannot decode
    prefill_rps: float  # its own prefill rate (a pair below it may bind)


def stages_of(group: Sequence[str], ranges: Sequence[tuple[int, int]]) -> Stages:
    return tuple((name, a, b) for name, (a, b) in zip(group, ranges, strict=True))

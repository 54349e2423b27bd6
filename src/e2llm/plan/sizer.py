"""Memory-aware size vectors for the GA: replicas that can hold the model, drawn at random.

A replica needs `need_bytes` beyond each device's runtime overhead (all weights and KV of one
sequence, see `GroupEvaluator.model_bytes`). Walking the permutation, `sample` closes a replica
once its devices offer a random target between `need` and `(1 + margin) * need` (margin usually
`max_margin`, sometimes the wider `wide_margin`: a long pipeline of fast devices can beat a short
one, and the GA must be able to draw it); a tail too
small for another replica is either left unused (listed in the plan) or joins the last replica,
with equal odds. `repair` keeps a size vector's replicas but grows any that are short of memory.
Memory sums are a necessary condition only; the DP has the last word (layer granularity, KV).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MemorySizer:
    free_bytes: tuple[float, ...]  # per device index: memory left for layers after overhead
    need_bytes: float
    max_margin: float = 1.0  # usual replicas: up to twice the memory they need ...
    wide_margin: float = 4.0  # ... but with odds `wide_odds` up to 5x (long, fast pipelines)
    wide_odds: float = 0.3

    def sample(self, devices: Sequence[int], rng: random.Random) -> tuple[int, ...]:
        sizes: list[int] = []
        pos, n = 0, len(devices)
        while pos < n:
            margin = self.wide_margin if rng.random() < self.wide_odds else self.max_margin
            target = self.need_bytes * (1.0 + rng.random() * margin)
            size, mem = 0, 0.0
            while pos + size < n and mem < target:
                mem += self.free_bytes[devices[pos + size]]
                size += 1
            if mem < self.need_bytes:
                break
            sizes.append(size)
            pos += size
        if pos < n and sizes and rng.random() < 0.5:
            sizes[-1] += n - pos
        return tuple(sizes)

    def repair(self, devices: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]:
        out: list[int] = []
        pos, n = 0, len(devices)
        for s in sizes:
            if pos >= n:
                break
            size = max(1, min(s, n - pos))
            mem = sum(self.free_bytes[d] for d in devices[pos : pos + size])
            while mem < self.need_bytes and pos + size < n:
                mem += self.free_bytes[devices[pos + size]]
                size += 1
            if mem < self.need_bytes:
                break
            out.append(size)
            pos += size
        return tuple(out)

    def minimal(self, devices: Sequence[int]) -> tuple[int, ...]:
        """Greedy smallest replicas along `devices` (for seeding the GA)."""
        return self.repair(devices, (1,) * len(devices))

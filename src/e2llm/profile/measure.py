"""The profiling sweep: per-layer prefill and decode times, LM-head and embedding times.

Per-layer times are the time of a stack of `layers` identical layers divided by `layers`, so the
per-call overhead of a stage forward (rotary embedding, Python dispatch) is spread over its
layers as it is when a real stage runs. The grid covers what the planner asks about: prompt
lengths 16..2048, decode batches 1..16 (the method's concurrency range) at contexts 128..2048.
Points whose context exceeds the model's `max_context` are left out.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from e2llm.cost.profile import ProfileSamples
from e2llm.profile.target import LayerStack
from e2llm.profile.timing import time_calls
from e2llm.progress import Progress
from e2llm.specs.model_spec import ModelSpec

log = logging.getLogger(__name__)

Builder = Callable[[], Callable[[], object]]


@dataclass(frozen=True, slots=True)
class ProfileGrid:
    """What to measure and how often. `budget_s` caps the timed calls of one point in one round
    (slow points of big models get fewer repeats, never fewer than 3)."""

    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
    decode_batches: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
    decode_contexts: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    head_tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    embed_tokens: tuple[int, ...] = (1, 16, 256, 2048)
    layers: int = 2
    rounds: int = 3  # sweeps over the grid; a point's time is the median over all rounds
    repeats: int = 5  # timed calls per point and round
    warmup: int = 1
    budget_s: float = 0.7  # per point and round
    bandwidth_bytes: int = 256 * 2**20


# A few seconds in all: enough points for every fitted coefficient, for tests and smoke runs.
QUICK_GRID = ProfileGrid(
    prefill_tokens=(16, 64, 256),
    decode_batches=(1, 4),
    decode_contexts=(128, 512),
    head_tokens=(1, 4),
    embed_tokens=(1, 64),
    rounds=1,
    repeats=3,
    warmup=1,
    budget_s=0.5,
    bandwidth_bytes=32 * 2**20,
)


def grid_points(grid: ProfileGrid, model: ModelSpec) -> int:
    """Points x rounds: the progress bar's total."""
    return grid.rounds * (
        len(_prefill_tokens(grid, model))
        + len(grid.decode_batches) * len(_contexts(grid, model))
        + len(grid.head_tokens)
        + len(grid.embed_tokens)
    )


def _prefill_tokens(grid: ProfileGrid, model: ModelSpec) -> list[int]:
    return [t for t in grid.prefill_tokens if t <= model.max_context]


def _contexts(grid: ProfileGrid, model: ModelSpec) -> list[int]:
    """Decode contexts whose longest sequence (+25%, see `spread_lengths`) plus the new token fit."""
    return [c for c in grid.decode_contexts if c + c // 4 < model.max_context]


def _points(
    grid: ProfileGrid, model: ModelSpec, stack: LayerStack
) -> list[tuple[str, tuple[int, ...], Builder]]:
    """(curve, sizes, builder of the timed call) for every point of the grid."""
    pts: list[tuple[str, tuple[int, ...], Builder]] = []
    for t in _prefill_tokens(grid, model):
        pts.append(("prefill", (t,), partial(stack.prefill_fn, t)))
    for c in _contexts(grid, model):
        for b in grid.decode_batches:
            pts.append(("decode", (b, c), partial(stack.decode_fn, b, c)))
    for t in grid.head_tokens:
        pts.append(("head", (t,), partial(stack.head_fn, t)))
    for t in grid.embed_tokens:
        pts.append(("embed", (t,), partial(stack.embed_fn, t)))
    return pts


def measure(
    model: ModelSpec,
    device: torch.device,
    dtype: torch.dtype,
    grid: ProfileGrid,
    progress: Progress | None = None,
) -> ProfileSamples:
    """Time `model`'s layer shape on `device`; `progress` is called once per point and round
    (`grid_points` in all).
    Prefill and decode times are per layer, head and embedding times per call (seconds).

    The grid is swept `grid.rounds` times and each point's result is the median of all its
    calls: a burst of load from another process then spoils a share of one point's calls
    instead of all of them.
    """
    stack = LayerStack(model, grid.layers, device, dtype)
    points = _points(grid, model, stack)
    calls: list[list[float]] = [[] for _ in points]
    time_calls(stack.prefill_fn(64), device, repeats=1, warmup=grid.warmup)  # first-call set-up
    total, done = grid.rounds * len(points), 0
    for _ in range(grid.rounds):
        for i, (curve, sizes, build) in enumerate(points):
            calls[i] += time_calls(
                build(), device, repeats=grid.repeats, warmup=grid.warmup, budget_s=grid.budget_s
            )
            done += 1
            if progress:
                progress(done, total, f"{curve} {'x'.join(map(str, sizes))}")
    per_call: dict[str, list[Any]] = {curve: [] for curve in ("prefill", "decode", "head", "embed")}
    for (curve, sizes, _), times in zip(points, calls, strict=True):
        seconds = statistics.median(times)
        log.debug("%s %s: %.3f ms per call, median of %d", curve, sizes, seconds * 1e3, len(times))
        per_call[curve].append((*sizes, seconds / grid.layers if curve in ("prefill", "decode") else seconds))
    return ProfileSamples(
        prefill=tuple(per_call["prefill"]),
        decode=tuple(per_call["decode"]),
        head=tuple(per_call["head"]),
        embed=tuple(per_call["embed"]),
    )

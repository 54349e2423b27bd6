"""Wall-clock timing of one torch callable: warm-up, then repeated timed calls.

Callers take the median (not the mean) because a box shared with other work produces one-sided
outliers. On CUDA/MPS the device is synchronised after each call so the time is the kernels'
time, not the launch time. A time budget stops the repeats early on slow points (a big model's
long prompt on a CPU), but never below `min_repeats`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on `device` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    budget_s: float = math.inf,
    min_repeats: int = 3,
) -> list[float]:
    """Seconds of each of up to `repeats` calls of `fn`, after `warmup` untimed calls.

    Stops repeating once the timed calls together exceed `budget_s`, after at least
    `min(min_repeats, repeats)` of them. `repeats >= 1`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        synchronize(device)
        times: list[float] = []
        while len(times) < repeats:
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - t0)
            if sum(times) > budget_s and len(times) >= min(min_repeats, repeats):
                break
    return times


def median_time_s(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    return statistics.median(time_calls(fn, device, repeats=repeats, warmup=warmup))

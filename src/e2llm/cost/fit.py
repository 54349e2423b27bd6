"""Fitting the profile's timing curves: small non-negative least squares on relative error.

Each curve is linear in its coefficients (prefill a + b·T + c·T², decode a + b·B + c·B·C,
LM head a + b·T). Coefficients are physical (seconds per call, per token, per token·context), so
they are constrained to be >= 0. With at most three unknowns, exact NNLS is cheapest by
enumerating the subsets of free coefficients: solve unconstrained least squares on each subset,
keep the feasible solutions, take the one with the smallest residual.

Rows are weighted by 1/measured time, so the fit minimises *relative* error: samples span
orders of magnitude (a 1-token head call vs a 4096-token prefill) and the planner cares about
ratios, not absolute microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np


def nnls_relative(rows: Sequence[Sequence[float]], y: Sequence[float]) -> tuple[float, ...]:
    """Coefficients x >= 0 minimising Σ ((rows·x - y) / y)². Needs every y > 0."""
    a = np.asarray(rows, dtype=float)
    t = np.asarray(y, dtype=float)
    if a.ndim != 2 or a.shape[0] != t.shape[0] or a.shape[0] == 0:
        raise ValueError(f"need a non-empty rows x coefficients matrix matching y, got {a.shape}, {t.shape}")
    if np.any(t <= 0):
        raise ValueError("measured times must be positive")
    w = 1.0 / t
    aw = a * w[:, None]
    yw = t * w  # all ones
    n = a.shape[1]
    best: tuple[float, np.ndarray] | None = None
    for size in range(n, 0, -1):
        for free in combinations(range(n), size):
            cols = list(free)
            sol, *_ = np.linalg.lstsq(aw[:, cols], yw, rcond=None)
            if np.any(sol < 0):
                continue
            x = np.zeros(n)
            x[cols] = sol
            res = float(np.sum((aw @ x - yw) ** 2))
            if best is None or res < best[0] - 1e-15:
                best = (res, x)
    if best is None:  # unreachable: a single column with positive entries always solves >= 0
        return tuple(0.0 for _ in range(n))
    return tuple(float(v) for v in best[1])


def median_abs_rel_error(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Median of |predicted - measured| / measured."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    return float(np.median(np.abs(p - m) / m))

"""PNG plots of simulation or benchmark runs (matplotlib, headless Agg backend).

- `plot_sweep`: mean waiting time and mean TTFT against the load, one line per system;
- `plot_cdfs`: TTFT and TBT distributions (CDF) of each system at one load;
- `plot_utilisation`: share of each device in use over time (busy intervals binned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from e2llm.sim.metrics import RequestRecord


def plot_sweep(
    loads: Sequence[float],
    metrics: Mapping[str, Sequence[Mapping[str, Any]]],
    load_label: str,
    path: str | Path,
) -> None:
    """`metrics[system][i]` is the metrics object at `loads[i]`."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "waiting_time_s", "mean waiting time (s)"),
        (axes[1], "ttft_s", "mean TTFT (s)"),
    ):
        for name, runs in metrics.items():
            ys = [m[key]["mean"] if m[key]["mean"] is not None else np.nan for m in runs]
            ax.plot(loads, ys, marker="o", label=name)
        ax.set_xlabel(load_label)
        ax.set_ylabel(title)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cdfs(records: Mapping[str, Sequence[RequestRecord]], path: str | Path, title: str = "") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, attr, label in ((axes[0], "ttft_s", "TTFT (s)"), (axes[1], "tbt_s", "TBT (s)")):
        for name, recs in records.items():
            xs = np.sort([v for r in recs if r.completed and (v := getattr(r, attr)) is not None])
            if len(xs):
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def utilisation_bins(intervals: Sequence[tuple[float, float, float]], end_s: float, bins: int) -> np.ndarray:
    """Mean share in use per time bin of [0, end_s): each interval spread over the bins it covers."""
    edges = np.linspace(0.0, end_s, bins + 1)
    width = end_s / bins
    busy = np.zeros(bins)
    for start, stop, share in intervals:
        first = min(int(start / width), bins - 1)
        last = min(int(stop / width), bins - 1)
        for b in range(first, last + 1):
            overlap = min(stop, edges[b + 1]) - max(start, edges[b])
            if overlap > 0:
                busy[b] += overlap * share
    return np.clip(busy / width, 0.0, 1.0)


def plot_utilisation(
    busy: Mapping[str, Sequence[tuple[float, float, float]]],
    devices: Sequence[str],
    end_s: float,
    path: str | Path,
    title: str = "",
    bins: int = 200,
) -> None:
    """Heat map: one row per device, time on x, colour = share of the device busy."""
    end_s = max(end_s, 1e-9)
    grid = np.array([utilisation_bins(busy.get(d, ()), end_s, bins) for d in devices])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(devices) + 1.5))
    im = ax.imshow(grid, aspect="auto", extent=(0, end_s, len(devices), 0), vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(np.arange(len(devices)) + 0.5, labels=list(devices))
    ax.set_xlabel("time (s)")
    fig.colorbar(im, ax=ax, label="busy share")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

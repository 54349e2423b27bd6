"""The one progress callback: long computations (the GA, the profiler, simulations, load runs)
report `(done, total, note)` through it and never print; the CLI draws the bar (`cli/progress.py`)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, note: str = "") -> None:
        """`done` of `total` steps finished; `note` says what runs now (may be empty)."""

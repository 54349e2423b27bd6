"""The CLI's one progress bar: every long command (plan, profile, simulate, compare, bench)
hands `progress_bar`'s callback (`e2llm.progress.Progress`) to the work it starts."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from e2llm.progress import Progress

SLOW_RUN_S = 2.0  # off a terminal (logs, CI), show a bar only once a run takes this long


@contextlib.contextmanager
def progress_bar(desc: str, unit: str) -> Iterator[Progress]:
    """A tqdm bar on stderr, shown at once on a terminal, otherwise once the run is slow; it
    disappears when the run ends (the command prints its result instead)."""
    from tqdm import tqdm

    start = time.perf_counter()
    bars: list[Any] = []

    def update(done: int, total: int, note: str = "") -> None:
        if not bars:
            if not (sys.stderr.isatty() or time.perf_counter() - start > SLOW_RUN_S):
                return
            bars.append(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False))
        bar = bars[0]
        bar.total = total
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()

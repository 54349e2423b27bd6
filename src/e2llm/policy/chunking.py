"""A MIXED replica's iteration budget (Sarathi-Serve, Agrawal et al., OSDI 2024; `sim/mixed.py`).

Every iteration is one decode step of the whole batch plus a chunk of the prompts being
prefilled, at most `chunk_tokens` tokens in all: decode tokens first (one per sequence), the rest
to prompt tokens, taken from the prompts in arrival order (one iteration may finish one prompt
and start the next), at least one prompt token so prompts always advance however large the batch.
The simulator and the runtime both cut their iterations with `plan_chunks`.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_chunks(remaining: Sequence[int], batch: int, chunk_tokens: int) -> list[int]:
    """Prompt tokens each prompt prefills this iteration, in order (only the leading prompts
    that get any): `remaining[i]` tokens are left of prompt i, `batch` sequences decode beside."""
    left = max(1, chunk_tokens - batch)
    out = []
    for r in remaining:
        n = min(left, r)
        out.append(n)
        left -= n
        if not left:
            break
    return out

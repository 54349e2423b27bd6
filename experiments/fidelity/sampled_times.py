"""A what-if timing source for the fidelity experiment: the profile's samples, interpolated.

The cost model times a profiled device with curves fitted to the samples (cost/profile.py:
prefill a + b*T + c*T^2, decode a + b*B + c*B*C, head a + b*T). Where the device has a step the
curves cannot follow (on a CPU, one row runs a different GEMV kernel than two or more rows), the
fit error flows into every prediction. Simulating once with these interpolated samples instead
separates that error from the others (runtime overheads, shared cores, a busy machine).

Piecewise-linear in each size between measured points; outside the measured range the fitted
curve is used. Same `DeviceTimes` protocol, so the simulator cannot tell the difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from e2llm.cost.profile import Profile


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Linear interpolation inside [min xs, max xs]; None outside."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


class SampledTimes:
    """`DeviceTimes` from a profile's raw samples, for the profiled model shape only."""

    def __init__(self, profile: Profile):
        s = profile.samples
        self.fit = profile.fit
        self._prefill = sorted(s.prefill)
        self._head = sorted(s.head)
        self._embed = sorted(s.embed)
        self._contexts = sorted({c for _, c, _ in s.decode})
        self._decode = {c: sorted((b, t) for b, cc, t in s.decode if cc == c) for c in self._contexts}

    def layer_prefill_s(self, tokens: int) -> float:
        got = _interp(tokens, [t for t, _ in self._prefill], [v for _, v in self._prefill])
        return self.fit.prefill_s(tokens) if got is None else got

    def layer_decode_s(self, batch: int, context: int) -> float:
        """Interpolated in batch at the two measured contexts around `context`, then in context."""
        per_context = []
        for c in self._contexts:
            rows = self._decode[c]
            per_context.append(_interp(batch, [b for b, _ in rows], [t for _, t in rows]))
        if any(v is None for v in per_context):
            return self.fit.decode_s(batch, context)
        got = _interp(context, self._contexts, [v for v in per_context if v is not None])
        return self.fit.decode_s(batch, context) if got is None else got

    def head_s(self, tokens: int) -> float:
        got = _interp(tokens, [t for t, _ in self._head], [v for _, v in self._head])
        return self.fit.head_s(tokens) if got is None else got

    def embed_s(self, tokens: int) -> float:
        got = _interp(tokens, [t for t, _ in self._embed], [v for _, v in self._embed])
        if got is not None:
            return got
        a, b = self.fit.embed or (0.0, 0.0)
        return a + b * tokens

"""What a planner knows of a workload: averages, as in the method, plus a KV budget per sequence
and the longer-than-average lengths it plans for (robustness)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from e2llm.specs.workload import DEFAULT_MIN_DECODE_TOK_S, Workload, generate_requests

ROBUST_WINDOW = 100  # consecutive requests whose mean lengths a plan must keep up with ...
ROBUST_QUANTILE = 0.9  # ... in this share of the windows
_SAMPLE_SEED = 1_000_003  # the robust lengths come from another sample than the one served


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    mean_input_tokens: float
    mean_output_tokens: float
    interval_s: float  # mean inter-arrival time
    min_decode_tok_s: float = DEFAULT_MIN_DECODE_TOK_S  # per-request generation speed floor
    kv_context_tokens: float = 0.0  # KV tokens budgeted per decoding sequence; 0: mean in + out
    # What the planner plans for (0: the means): the 90th percentile over windows of 100
    # consecutive requests of the window's mean input / output tokens (`robust`).
    robust_input_tokens: float = 0.0
    robust_output_tokens: float = 0.0

    @classmethod
    def of(cls, workload: Workload) -> WorkloadShape:
        """The planner's view of `workload`: its means, and the 90th percentile of a request's
        final context as the KV budget per sequence. Budgeting KV at the mean context would plan
        a concurrency that every longer-than-average request makes the decoder fall short of."""
        contexts = sorted(r.input_tokens + r.output_tokens for r in generate_requests(workload))
        # an independent sample (a replayed trace is its own history: the same rows)
        sample = generate_requests(workload, workload.seed + _SAMPLE_SEED)
        return cls(
            mean_input_tokens=workload.mean_input_tokens,
            mean_output_tokens=workload.mean_output_tokens,
            interval_s=workload.mean_interval_s,
            min_decode_tok_s=workload.min_decode_tok_s,
            kv_context_tokens=float(contexts[(9 * (len(contexts) - 1)) // 10]) if contexts else 0.0,
            robust_input_tokens=_window_quantile([r.input_tokens for r in sample]),
            robust_output_tokens=_window_quantile([r.output_tokens for r in sample]),
        )

    def robust(self) -> WorkloadShape:
        """The shape the planner scores plans on: the window means' 90th percentile where it is
        above the mean. A plan that keeps up exactly at the means falls behind whenever the
        realised lengths run a little long (every other seed of a synthetic workload, the long-
        prompt bursts of a trace); scored on these lengths it keeps that much headroom."""
        return dataclasses.replace(
            self,
            mean_input_tokens=max(self.mean_input_tokens, self.robust_input_tokens),
            mean_output_tokens=max(self.mean_output_tokens, self.robust_output_tokens),
        )


def _window_quantile(lengths: list[int]) -> float:
    """The ROBUST_QUANTILE of the mean over every window of ROBUST_WINDOW consecutive lengths
    (0 when there are fewer)."""
    if len(lengths) < ROBUST_WINDOW:
        return 0.0
    sums = np.cumsum(np.array(lengths, dtype=float))
    means = (sums[ROBUST_WINDOW - 1 :] - np.concatenate(([0.0], sums[:-ROBUST_WINDOW]))) / ROBUST_WINDOW
    return float(np.quantile(means, ROBUST_QUANTILE))

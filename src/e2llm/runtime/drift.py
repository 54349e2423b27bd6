"""Workload drift: the live workload over a sliding window, and when it has moved away from the
shape the plan was made for far enough and long enough to plan again. Pure: times come in as
arguments, nothing here reads a clock or does I/O.

- `WorkloadWindow` keeps the last `window_s` seconds of arrivals (time, prompt tokens) and of
  finished requests (time, generated tokens; a request's output length is known only at its end)
  and gives the observed `WorkloadShape` (arrival interval, mean input and output tokens, the
  90th-percentile context as the KV budget, the planned speed floor) and the role controller's
  `Demand`. Until `min_requests` requests arrived in the window it has no opinion (None).
- `drift(planned, observed)`: how far apart two shapes are, as the largest factor by which the
  arrival rate, the mean input or the mean output tokens changed, minus one (doubling and halving
  both count 1.0).
- `DriftDetector`: fires once the drift has stayed at or above `threshold` for `hold_s` seconds
  (a burst shorter than that is left to the role controller); the shape it fires with becomes the
  new reference, so one lasting shift re-plans once.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass

from e2llm.errors import InputError
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.policy.controller import Demand

MAX_KEPT = 10_000  # requests a window keeps at most (a burst cannot grow it without limit)
MAX_S = 86_400.0
# setting -> allowed range (both ends allowed); an error names it `drift_<setting>`
_RANGES = (
    ("threshold", 0.0, 100.0),
    ("window_s", 1.0, MAX_S),
    ("hold_s", 0.0, MAX_S),
    ("min_requests", 1, MAX_KEPT),
)


@dataclass(frozen=True, slots=True)
class DriftSettings:
    threshold: float = 0.5  # drift (see `drift`) that calls for a re-plan; 0 turns detection off
    window_s: float = 60.0  # seconds of recent requests the live shape is measured over
    hold_s: float = 30.0  # the drift must last this long before the re-plan
    min_requests: int = 20  # requests that must have arrived in the window for a shape

    def __post_init__(self) -> None:
        for name, lo, hi in _RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not (math.isfinite(value) and lo <= value <= hi):
                raise InputError(f"drift_{name}", f"must be in [{lo:g}, {hi:g}]", value)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0


class WorkloadWindow:
    def __init__(self, window_s: float, start_s: float):
        self.window_s = window_s
        self.start_s = start_s  # when the window began to look (the rate's span before it is full)
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque(maxlen=MAX_KEPT)
        self._finished: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=MAX_KEPT)

    def arrive(self, now: float, input_tokens: int) -> None:
        self._arrivals.append((now, input_tokens))

    def finish(self, now: float, input_tokens: int, output_tokens: int) -> None:
        self._finished.append((now, input_tokens, output_tokens))

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        for q in (self._arrivals, self._finished):
            while q and q[0][0] < cutoff:
                q.popleft()

    def shape(self, now: float, base: WorkloadShape, min_requests: int = 1) -> WorkloadShape | None:
        """The shape of the requests of the last `window_s` seconds; `base` gives the speed floor
        and, until a request finishes, the output length. None below `min_requests` arrivals."""
        self._trim(now)
        n = len(self._arrivals)
        if n < max(1, min_requests):
            return None
        span = min(self.window_s, now - self.start_s)
        if span <= 0:
            return None
        mean_in = sum(i for _, i in self._arrivals) / n
        outputs = [o for _, _, o in self._finished]
        mean_out = sum(outputs) / len(outputs) if outputs else base.mean_output_tokens
        contexts = sorted(i + o for _, i, o in self._finished)
        p90 = float(contexts[(9 * (len(contexts) - 1)) // 10]) if contexts else 0.0
        return dataclasses.replace(
            base,
            mean_input_tokens=mean_in,
            mean_output_tokens=max(1.0, mean_out),
            interval_s=span / n,
            kv_context_tokens=p90,
        )

    def demand(self, now: float, base: WorkloadShape) -> Demand:
        """The role controller's view of the recent requests' shape."""
        shape = self.shape(now, base) or base
        return Demand(shape.mean_input_tokens, shape.mean_output_tokens)


def drift(planned: WorkloadShape, observed: WorkloadShape) -> float:
    """The largest factor of change among arrival rate, mean input and mean output tokens, - 1."""
    pairs = (
        (1.0 / planned.interval_s, 1.0 / observed.interval_s),
        (planned.mean_input_tokens, observed.mean_input_tokens),
        (planned.mean_output_tokens, observed.mean_output_tokens),
    )
    return max(max(a / b, b / a) for a, b in pairs if a > 0 and b > 0) - 1.0


class DriftDetector:
    def __init__(self, planned: WorkloadShape, settings: DriftSettings):
        self.planned = planned  # the reference: the plan's shape, then the last one re-planned for
        self.settings = settings
        self.since_s: float | None = None  # when the current drift began
        self.last: float = 0.0  # the drift at the last observation

    def observe(self, now: float, observed: WorkloadShape | None) -> WorkloadShape | None:
        """The shape to re-plan for, once the drift has lasted `hold_s`, else None."""
        if observed is None or not self.settings.enabled:
            self.since_s = None
            return None
        self.last = drift(self.planned, observed)
        if self.last < self.settings.threshold:
            self.since_s = None
            return None
        if self.since_s is None:
            self.since_s = now
        if now - self.since_s < self.settings.hold_s:
            return None
        self.planned, self.since_s = observed, None
        return observed

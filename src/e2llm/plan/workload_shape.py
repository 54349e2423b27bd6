"""What a planner knows of a workload: averages, as in the method, plus a KV budget per sequence."""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.specs.workload import DEFAULT_MIN_DECODE_TOK_S, Workload, generate_requests


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    mean_input_tokens: float
    mean_output_tokens: float
    interval_s: float  # mean inter-arrival time
    min_decode_tok_s: float = DEFAULT_MIN_DECODE_TOK_S  # per-request generation speed floor
    kv_context_tokens: float = 0.0  # KV tokens budgeted per decoding sequence; 0: mean in + out

    @classmethod
    def of(cls, workload: Workload) -> WorkloadShape:
        """The planner's view of `workload`: its means, and the 90th percentile of a request's
        final context as the KV budget per sequence. Budgeting KV at the mean context would plan
        a concurrency that every longer-than-average request makes the decoder fall short of."""
        contexts = sorted(r.input_tokens + r.output_tokens for r in generate_requests(workload))
        return cls(
            mean_input_tokens=workload.mean_input_tokens,
            mean_output_tokens=workload.mean_output_tokens,
            interval_s=workload.mean_interval_s,
            min_decode_tok_s=workload.min_decode_tok_s,
            kv_context_tokens=float(contexts[(9 * (len(contexts) - 1)) // 10]) if contexts else 0.0,
        )

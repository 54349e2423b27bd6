"""A PREFILL replica: prompts flow through its pipeline stages one micro-batch (one prompt) each.

Every stage serves one prompt at a time, FIFO; as soon as a stage hands a prompt on (the hop of
its hidden states goes through the shared network), it starts the next one, so up to one prompt
per stage is in flight and the replica's throughput is set by its slowest stage. Prompts are not
packed together: prefill cost is close to linear in tokens, so packing would change little.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from e2llm.cost.model import CostModel
from e2llm.plan.types import Replica
from e2llm.sim.engine import Event
from e2llm.sim.network import Network
from e2llm.sim.state import BusyLog, Job, KvSizer, prefill_estimate, prefill_stage_s

PrefillDone = Callable[[float, Job], list[Event]]
OnIdle = Callable[[float], list[Event]]
Start = Callable[[float], list[Event]]
NOMINAL_PROMPT_TOKENS = 1024  # prompt length for the nominal rate of a plan that does not state one


class PrefillPipeline:
    def __init__(
        self,
        replica: Replica,
        cost: CostModel,
        network: Network,
        busy: BusyLog,
        on_done: PrefillDone,
        on_idle: OnIdle,
    ) -> None:
        self.replica = replica
        self.kv = KvSizer(cost, replica)
        self._cost = cost
        self._net = network
        self._busy = busy
        self._on_done = on_done
        self._on_idle = on_idle
        n = len(replica.stages)
        self._queues: list[deque[tuple[float, Job]]] = [deque() for _ in range(n)]  # (queued at, job)
        self._idle = [True] * n
        self._entered = 0  # prompts started on the first stage so far
        self._passed = [0] * n  # prompts each stage has finished so far (stages are FIFO)
        # per stage: (prompts it must finish first, what to start then): see `after_entered`
        self._waiting_calls: list[deque[tuple[int, Callable[[float], list[Event]]]]] = [
            deque() for _ in range(n)
        ]
        self.pending_tokens = 0  # prompt tokens routed here and not yet prefilled
        self.backlog_s = 0.0  # estimated bottleneck-stage work routed here and not yet done
        self._svc_cache: dict[int, tuple[float, float]] = {}
        self.nominal_tok_s = (
            replica.prefill_capacity_tok_s or NOMINAL_PROMPT_TOKENS / self.estimate(NOMINAL_PROMPT_TOKENS)[0]
        )

    @property
    def rate_tok_s(self) -> float:
        """Prompt tokens per second while busy: of the prompts queued now (their bottleneck-stage
        work), else the plan's capacity."""
        return self.pending_tokens / self.backlog_s if self.backlog_s > 0 else self.nominal_tok_s

    @property
    def prompts_waiting(self) -> int:
        return len(self._queues[0])

    def estimate(self, tokens: int) -> tuple[float, float]:
        """(pipelined service time = slowest stage, latency = all stages + hops) for one prompt."""
        got = self._svc_cache.get(tokens)
        if got is None:
            got = prefill_estimate(self._cost, self.replica.stages, tokens)
            self._svc_cache[tokens] = got
        return got

    def submit(self, now: float, job: Job) -> list[Event]:
        job.prefill_replica = self.replica.id
        self.pending_tokens += job.input_tokens
        self.backlog_s += self.estimate(job.input_tokens)[0]
        self._queues[0].append((now, job))
        return self._try_start(now, 0)

    def after_entered(self, now: float, k: int, start: Start) -> list[Event]:
        """Run `start` once stage k has finished every prompt already in the pipeline: where a
        call to a stage queues behind the prompts sent to it before (Ray actors run their calls in
        order; `execution.RAY_RUNTIME`'s KV export)."""
        if self._passed[k] >= self._entered:
            return start(now)
        self._waiting_calls[k].append((self._entered, start))
        return []

    def _try_start(self, now: float, k: int) -> list[Event]:
        if not self._idle[k] or not self._queues[k]:
            return []
        queued_at, job = self._queues[k].popleft()
        self._idle[k] = False
        if k == 0:
            self._entered += 1
            job.prefill_start_s = now
        else:
            job.prefill_queued_s += now - queued_at
        stage = self.replica.stages[k]
        end = now + prefill_stage_s(self._cost, stage, job.input_tokens)
        self._busy.add(stage.device, now, end)
        return [Event(end, self._stage_done, k, job)]

    def _stage_done(self, now: float, k: int, job: Job) -> list[Event]:
        self._idle[k] = True
        self._passed[k] += 1
        out: list[Event] = []
        calls = self._waiting_calls[k]
        while calls and calls[0][0] <= self._passed[k]:
            out += calls.popleft()[1](now)
        out += self._try_start(now, k)
        stages = self.replica.stages
        if k + 1 < len(stages):
            n_bytes = self._cost.activation_bytes(job.input_tokens)

            def arrived(t: float) -> list[Event]:
                self._queues[k + 1].append((t, job))
                return self._try_start(t, k + 1)

            out += self._net.send(now, stages[k].device, stages[k + 1].device, n_bytes, arrived)
            return out
        job.prefill_end_s = now
        self.pending_tokens -= job.input_tokens
        self.backlog_s -= self.estimate(job.input_tokens)[0]
        if not self.pending_tokens:
            self.backlog_s = 0.0  # no float residue once empty
        out += self._on_done(now, job)
        if not self.pending_tokens:
            out += self._on_idle(now)
        return out

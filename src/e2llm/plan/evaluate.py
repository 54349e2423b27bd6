"""What one ordered device group achieves as a replica, in each role: the planner's fitness.

For a group (devices in pipeline order) this runs the layer split (the DP, or another splitter)
once for prefill and once per decode concurrency 1..16, as the method does, and turns stage times
into rates:

- PREFILL: prompts pipeline through the stages, one entering per bottleneck-stage time, so the
  replica sustains `mean_input / bottleneck` tok/s; one prompt takes the sum of the stage times.
  Memory: KV of one sequence at the planned context.
- DECODER at concurrency c: the c sequences are split into m = min(c, S) micro-batches of
  b = ceil(c / m) sequences kept in flight over the S stages (the pipeline stays full). A request
  gets its next token when its micro-batch comes round again, so the per-request token time is
  the pipeline round trip `max(sum of stage times, m * bottleneck stage time)` at batch b, and the
  replica generates c tokens per round trip. Stage 1's incoming hop is the sampled tokens sent
  back from the last stage. Memory: KV of all c sequences at the planned context.
  A concurrency is kept only if it fits in memory and each request gets >= min_decode_tok_s.

Planned context = mean input + mean output tokens (capped at the model's max context); decode
steps are timed at the mean context a request has while decoding (input + output / 2).
The embedding sits on the first device and the LM head on the last (the natural placement); the
pipeline order, and so which devices hold them, is what the grouping search chooses.

Results are cached by the group's *signature* (each device's timing and memory numbers and the
links, not names), so identical devices in identical positions are evaluated once: large
clusters built from a few device models reuse most evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.dp import Partition, StageCosts, partition_layers_many
from e2llm.plan.roles import DecodeChoice, ReplicaRates
from e2llm.plan.workload_shape import WorkloadShape

MAX_CONCURRENCY = 16  # decode batch sizes tried per decoder, as in the method
TOKEN_ID_BYTES = 4  # a sampled token sent back to the first stage

# Splits several instances of one group (same devices, e.g. every decode concurrency) at once.
Splitter = Callable[[Sequence[StageCosts]], list[Partition | None]]


@dataclass(frozen=True, slots=True)
class PhaseEval:
    """One role's layer split of a group and its timing (seconds)."""

    partition: Partition
    concurrency: int  # sequences in the replica (1 for prefill)
    micro_batches: int
    token_s: float  # prefill: one prompt's latency; decode: per-request time per token
    rate_tok_s: float  # tokens per second the whole replica sustains in this role


@dataclass(frozen=True, slots=True)
class GroupEval:
    prefill: PhaseEval
    decode: tuple[PhaseEval, ...]  # feasible concurrencies (memory and speed floor), ascending

    def rates(self, shape: WorkloadShape) -> ReplicaRates:
        """Requests per second in each role, for `assign_roles`."""
        choices = tuple(
            DecodeChoice(
                e.concurrency, e.rate_tok_s / shape.mean_output_tokens, shape.mean_output_tokens * e.token_s
            )
            for e in self.decode
        )
        return ReplicaRates(self.prefill.rate_tok_s / shape.mean_input_tokens, self.prefill.token_s, choices)

    def phase(self, prefill: bool, concurrency: int) -> PhaseEval:
        if prefill:
            return self.prefill
        return next(e for e in self.decode if e.concurrency == concurrency)


def planned_context(cost: CostModel, shape: WorkloadShape) -> int:
    """Tokens of KV each sequence is planned to hold (memory check)."""
    tokens = shape.kv_context_tokens or shape.mean_input_tokens + shape.mean_output_tokens
    return min(cost.model.max_context, math.ceil(tokens))


class GroupEvaluator:
    """Evaluates ordered device groups for one (cost model, workload), with a signature cache."""

    def __init__(self, cost: CostModel, shape: WorkloadShape, split: Splitter = partition_layers_many):
        self.cost = cost
        self.shape = shape
        self.split = split
        self.splits_run = 0  # layer-split calls (DP runs), for the planner statistics
        self._cache: dict[tuple[object, ...], GroupEval | None] = {}
        self._rates: dict[tuple[str, ...], ReplicaRates | None] = {}
        m = cost.model
        self._ctx = planned_context(cost, shape)
        self._prompt = max(1, round(shape.mean_input_tokens))
        self._decode_ctx = max(1, round(shape.mean_input_tokens + shape.mean_output_tokens / 2))
        self._kv = tuple(m.kv_bytes_per_token(i) * m.kv_tokens(i, self._ctx) for i in range(m.n_layers))
        self._model_bytes = (
            cost.weight_bytes(0, m.n_layers, embedding=True, lm_head=True)
            + sum(self._kv)
            + RUNTIME_OVERHEAD_BYTES
        )
        self._devices = {d.name: d for d in cost.cluster.devices}
        self._free = {d.name: float(d.memory_bytes - RUNTIME_OVERHEAD_BYTES) for d in cost.cluster.devices}
        self._weight = m.layer_weight_bytes
        self._extra_bytes = {
            (emb, head): cost.weight_bytes(0, 0, embedding=emb, lm_head=head)
            for emb in (False, True)
            for head in (False, True)
        }
        self._times: dict[tuple[object, ...], float] = {}
        self._bytes: dict[int, tuple[float, ...]] = {}
        self._dev_sigs: dict[str, tuple[float, ...]] = {}

    @property
    def model_bytes(self) -> float:
        """Memory one replica needs at least on a single device: all weights, KV of one
        sequence at the planned context, one runtime overhead."""
        return self._model_bytes

    def free_bytes(self, name: str) -> float:
        """What a device offers to a replica's layers after its runtime overhead."""
        return self._free[name]

    def may_fit(self, group: Sequence[str]) -> bool:
        """Cheap necessary condition: the group's memory can hold one replica."""
        return sum(self.free_bytes(n) for n in group) + RUNTIME_OVERHEAD_BYTES >= self._model_bytes

    def signature(self, group: Sequence[str]) -> tuple[object, ...]:
        """What the evaluation of `group` depends on: each device's timing and memory numbers
        and the links between consecutive stages. Groups with equal signatures (identical
        devices in identical places) have equal evaluations."""
        cl = self.cost.cluster
        sig: list[object] = []
        for k, name in enumerate(group):
            prev = group[k - 1] if k else group[-1]
            sig.append((self._device_signature(name), cl.link(prev, name) if prev != name else None))
        return tuple(sig)

    def _device_signature(self, name: str) -> tuple[float, ...]:
        if name not in self._dev_sigs:
            numbers = [self._free[name]]
            for prefill, batches in ((True, (1,)), (False, range(1, MAX_CONCURRENCY + 1))):
                for b in batches:
                    numbers.append(self._stage_s(name, prefill, b, 1, False, False))
                    numbers += [
                        self._stage_s(name, prefill, b, 0, e, h) for e in (False, True) for h in (False, True)
                    ]
            self._dev_sigs[name] = tuple(numbers)
        return self._dev_sigs[name]

    def evaluate(self, group: Sequence[str]) -> GroupEval | None:
        """The group as a replica; None if it cannot hold the model."""
        if not self.may_fit(group):
            return None
        key = self.signature(group)
        if key not in self._cache:
            self._cache[key] = self._evaluate(tuple(group))
        return self._cache[key]

    def rates(self, group: Sequence[str]) -> ReplicaRates | None:
        """`evaluate(group).rates(...)`, cached: the GA asks this for every replica it scores."""
        names = tuple(group)
        if names not in self._rates:
            ev = self.evaluate(names)
            self._rates[names] = ev.rates(self.shape) if ev else None
        return self._rates[names]

    # --- internals -------------------------------------------------------------------------
    def _stage_s(self, name: str, prefill: bool, batch: int, n_layers: int, emb: bool, head: bool) -> float:
        key = (name, prefill, batch, n_layers, emb, head)
        if key not in self._times:
            cost = self.cost
            if prefill:
                t = cost.stage_prefill_s(name, n_layers, self._prompt, embedding=emb, lm_head=head)
            else:
                t = cost.stage_decode_s(name, n_layers, batch, self._decode_ctx, embedding=emb, lm_head=head)
            self._times[key] = t
        return self._times[key]

    def _hop_s(self, a: str, b: str, n_bytes: float) -> float:
        key = (a, b, n_bytes)
        if key not in self._times:
            self._times[key] = self.cost.transfer_s(a, b, n_bytes)
        return self._times[key]

    def _times_of(
        self, group: tuple[str, ...], *, batch: int, prefill: bool
    ) -> tuple[tuple[float, ...], ...]:
        """Per-layer and fixed seconds of each stage (see `StageCosts`) at one batch size."""
        last = len(group) - 1
        tokens = self._prompt if prefill else batch
        layer_s, fixed_s = [], []
        for k, name in enumerate(group):
            emb, head = k == 0, k == last
            layer_s.append(self._stage_s(name, prefill, batch, 1, False, False))
            fixed = self._stage_s(name, prefill, batch, 0, emb, head)
            if k:
                fixed += self._hop_s(group[k - 1], name, self.cost.activation_bytes(tokens))
            elif not prefill:
                fixed += self._hop_s(group[last], name, TOKEN_ID_BYTES * batch)
            fixed_s.append(fixed)
        return tuple(layer_s), tuple(fixed_s)

    def _costs(
        self, times: tuple[tuple[float, ...], ...], group_bytes: tuple[tuple[float, ...], ...], sequences: int
    ) -> StageCosts:
        return StageCosts(times[0], times[1], group_bytes[0], self._layer_bytes(sequences), group_bytes[1])

    def _group_bytes(self, group: tuple[str, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(free bytes after overhead and embedding / LM head, whole memory) per stage."""
        last = len(group) - 1
        free = tuple(self._free[n] - self._extra_bytes[k == 0, k == last] for k, n in enumerate(group))
        return free, tuple(self._free[n] + RUNTIME_OVERHEAD_BYTES for n in group)

    def _layer_bytes(self, sequences: int) -> tuple[float, ...]:
        if sequences not in self._bytes:
            self._bytes[sequences] = tuple(self._weight + sequences * kv for kv in self._kv)
        return self._bytes[sequences]

    def _evaluate(self, group: tuple[str, ...]) -> GroupEval | None:
        """Prefill and every decode concurrency of one group, in at most two batched splits.

        Concurrencies with the same micro-batch size b share their stage times and differ only
        in KV memory; the split of the smallest such concurrency (the loosest memory) is optimal
        for a larger one whenever it still fits there, so only the others need their own split.
        """
        n_stages = len(group)
        conc = range(1, MAX_CONCURRENCY + 1)
        micro = {c: min(c, n_stages) for c in conc}
        batch = {c: math.ceil(c / micro[c]) for c in conc}
        times = {b: self._times_of(group, batch=b, prefill=False) for b in sorted(set(batch.values()))}
        gb = self._group_bytes(group)
        costs = {c: self._costs(times[batch[c]], gb, c) for c in conc}
        rep = {b: min(c for c in conc if batch[c] == b) for b in times}
        prompt = self._costs(self._times_of(group, batch=1, prefill=True), gb, 1)
        first = self.split([prompt] + [costs[c] for c in rep.values()])
        self.splits_run += len(first)
        pre = first[0]
        if pre is None:
            return None
        prefill = PhaseEval(pre, 1, 1, pre.total_s, self._prompt / pre.bottleneck_s)
        parts = dict(zip(rep.values(), first[1:], strict=True))
        redo = []
        for c in conc:
            if c in parts:
                continue
            part = parts[rep[batch[c]]]
            if part is None or costs[c].fits(part.counts):
                parts[c] = part  # None: no split fits even the looser memory
            else:
                redo.append(c)
        if redo:
            self.splits_run += len(redo)
            parts.update(zip(redo, self.split([costs[c] for c in redo]), strict=True))
        decode = []
        for c in conc:
            part = parts[c]
            if part is None:
                break  # more sequences only need more KV memory
            token_s = max(part.total_s, micro[c] * part.bottleneck_s)
            if 1.0 / token_s >= self.shape.min_decode_tok_s:
                decode.append(PhaseEval(part, c, micro[c], token_s, c / token_s))
        return GroupEval(prefill, tuple(decode))

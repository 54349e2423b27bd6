"""What one ordered device group achieves as a replica, in each role: the planner's fitness.

For a group (devices in pipeline order) this runs the layer split (the DP, or another splitter)
once for prefill and once per decode concurrency 1..16, as the method does, and turns stage times
into rates:

- PREFILL: prompts pipeline through the stages, one entering per bottleneck-stage time, so the
  replica sustains `mean_input / bottleneck` tok/s; one prompt takes the sum of the stage times,
  then its KV hand-off. Memory: KV of one sequence at the planned context.
- DECODER at concurrency c: the c sequences are split into m = min(c, S) micro-batches of
  b = ceil(c / m) sequences kept in flight over the S stages (the pipeline stays full). A request
  gets its next token when its micro-batch comes round again, so the per-request token time is
  the pipeline round trip `max(sum of stage times, m * bottleneck stage time)` at batch b, and the
  replica generates c tokens per round trip. Stage 1's incoming hop is the sampled tokens sent
  back from the last stage. Memory: KV of all c sequences at the planned context.
  A concurrency is kept only if it fits in memory and each request gets >= min_decode_tok_s.
- MIXED at concurrency c (both phases on the group, chunked prefill): the decode split, with the
  replica's time shared between its prompts and its decode batch. Serving r requests/s takes
  r / p of its time for prompts (p: prompts/s on that split) and r / d for tokens (d: requests/s
  of the decode batch), so r <= p d / (p + d); decoding only in the rest of its time, a request
  gets (1 - r / p) / token_s tok/s, which must meet the speed floor. No KV crosses the network.

KV hand-off (a PREFILL's KV goes to a DECODER, layer by layer to the device that owns the layer):
every device has a network port, modelled by its best link to any other device; a prefill device
needs `its layers' KV / port bandwidth` per prompt, a pipeline resource beside its compute, so the
prefill split is chosen with it (`StageCosts.kv_s`: the DP may give a well-connected device more
layers than its speed alone would). A decoder device receives its layers' KV for every request it
takes, which caps the decoder's request rate; where that cap binds, the decode split is redone
with the port term and kept if it sustains more. The pair-level check (the actual link between
each prefill device and each decoder device) is `kv_links`; it needs both replicas.

Planned context = the workload's KV budget per sequence (its p90 context, else mean input +
output; capped at the model's max context); decode steps are timed at the mean context a request
has while decoding (input + output / 2). The embedding sits on the first device and the LM head
on the last (the natural placement); the pipeline order, and so which devices hold them, is what
the grouping search chooses.

Results are cached by the group's *signature* (each device's timing, memory and port numbers and
the links, not names), so identical devices in identical positions are evaluated once: large
clusters built from a few device models reuse most evaluations, across GA generations.

~400 lines: one fitness function; the phase, MIXED and group evaluations share the cost model's
per-group caches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.dp import Partition, StageCosts, partition_layers_many
from e2llm.plan.role_scoring import DecodeChoice, MixedChoice, ReplicaRates
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.device import Link

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
    handoff_s: float = 0.0  # prefill: its KV hand-off after the prompt (alone on the ports)
    handoff_rps: float = math.inf  # decoder: requests/s its ports can receive the KV of


@dataclass(frozen=True, slots=True)
class MixedEval:
    """The group doing both phases at one decode concurrency (its decode split)."""

    phase: PhaseEval  # the decode split and batch timing
    prefill_bottleneck_s: float  # one prompt's slowest stage on that split (no hand-off)
    prefill_s: float  # one prompt's latency on that split
    rate_rps: float  # requests per second it serves end to end (time shared between phases)


@dataclass(frozen=True, slots=True)
class GroupEval:
    prefill: PhaseEval
    decode: tuple[PhaseEval, ...]  # feasible concurrencies (memory and speed floor), ascending
    decoder: tuple[PhaseEval, ...] = ()  # the same as DECODER (hand-off ports checked); () = decode
    mixed: tuple[MixedEval, ...] = ()  # feasible MIXED concurrencies, ascending

    def rates(self, shape: WorkloadShape) -> ReplicaRates:
        """Requests per second in each role, for `assign_roles`."""
        out = shape.mean_output_tokens
        choices = tuple(
            DecodeChoice(
                e.concurrency, min(e.rate_tok_s / out, e.handoff_rps), out * e.token_s, e.rate_tok_s / out
            )
            for e in self.decoder or self.decode
        )
        mixed = None
        if self.mixed:
            best = max(self.mixed, key=lambda m: (m.rate_rps, -m.phase.concurrency))
            mixed = MixedChoice(best.phase.concurrency, best.rate_rps, _mixed_latency(best, out))
        return ReplicaRates(
            self.prefill.rate_tok_s / shape.mean_input_tokens,
            self.prefill.token_s + self.prefill.handoff_s,
            choices,
            mixed,
        )

    def phase(self, prefill: bool, concurrency: int) -> PhaseEval:
        if prefill:
            return self.prefill
        return next(e for e in self.decoder or self.decode if e.concurrency == concurrency)

    def mixed_at(self, concurrency: int) -> MixedEval:
        return next(m for m in self.mixed if m.phase.concurrency == concurrency)


def _mixed_latency(m: MixedEval, mean_output: float) -> float:
    """A prompt, then its tokens at the decode speed left while prompts take their share."""
    decode_share = 1.0 - m.rate_rps * m.prefill_bottleneck_s
    return m.prefill_s + mean_output * m.phase.token_s / max(decode_share, 1e-12)


def planned_context(cost: CostModel, shape: WorkloadShape) -> int:
    """Tokens of KV each sequence is planned to hold (memory check)."""
    tokens = shape.kv_context_tokens or shape.mean_input_tokens + shape.mean_output_tokens
    return min(cost.model.max_context, math.ceil(tokens))


def port_link(cost: CostModel, name: str) -> Link:
    """A device's network port for KV hand-offs: its best link to any other device (the
    fastest its KV can leave or arrive; `kv_links` checks the link actually used)."""
    cl = cost.cluster
    others = [cl.link(name, o) for o in cl.names if o != name]
    return (
        max(others, key=lambda link: (link.bandwidth_mbps, -link.latency_ms)) if others else cl.default_link
    )


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
        # KV one prompt hands off, per layer on average (the DP's port term is per layer)
        self._handoff_layer_bytes = cost.kv_bytes(0, m.n_layers, self._prompt) / m.n_layers
        self._model_bytes = (
            cost.weight_bytes(0, m.n_layers, embedding=True, lm_head=True)
            + sum(self._kv)
            + RUNTIME_OVERHEAD_BYTES
        )
        self._devices = {d.name: d for d in cost.cluster.devices}
        self._free = {d.name: float(d.memory_bytes - RUNTIME_OVERHEAD_BYTES) for d in cost.cluster.devices}
        self._ports = {n: port_link(cost, n) for n in cost.cluster.names}
        self._weight = m.layer_weight_bytes
        self._extra_bytes = {
            (emb, head): cost.weight_bytes(0, 0, embedding=emb, lm_head=head)
            for emb in (False, True)
            for head in (False, True)
        }
        self._times: dict[tuple[object, ...], float] = {}
        self._bytes: dict[int, tuple[float, ...]] = {}
        self._ids: dict[object, int] = {}  # device numbers and links, interned for `signature`
        self._dev_ids: dict[str, int] = {}
        self._link_ids: dict[tuple[str, str], int] = {}
        self._by_names: dict[tuple[str, ...], GroupEval | None] = {}

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
        """What the evaluation of `group` depends on: each device's timing, memory and port
        numbers and the links between consecutive stages, as small ints (equal numbers, equal
        int: hashing them is what the GA's cache lookups cost). Groups with equal signatures
        (identical devices in identical places) have equal evaluations."""
        sig: list[object] = []
        for k, name in enumerate(group):
            prev = group[k - 1] if k else group[-1]
            sig.append((self._device_id(name), self._link_id(prev, name)))
        return tuple(sig)

    def _device_id(self, name: str) -> int:
        if name not in self._dev_ids:
            numbers: list[object] = [self._free[name], self._ports[name]]
            for prefill, batches in ((True, (1,)), (False, range(1, MAX_CONCURRENCY + 1))):
                for b in batches:
                    numbers.append(self._stage_s(name, prefill, b, 1, False, False))
                    numbers += [
                        self._stage_s(name, prefill, b, 0, e, h) for e in (False, True) for h in (False, True)
                    ]
            self._dev_ids[name] = self._ids.setdefault(tuple(numbers), len(self._ids))
        return self._dev_ids[name]

    def _link_id(self, a: str, b: str) -> int:
        """The link feeding stage b from stage a (none for a one-device group)."""
        if (a, b) not in self._link_ids:
            link = self.cost.cluster.link(a, b) if a != b else None
            self._link_ids[a, b] = self._ids.setdefault(link, len(self._ids))
        return self._link_ids[a, b]

    def evaluate(self, group: Sequence[str]) -> GroupEval | None:
        """The group as a replica; None if it cannot hold the model."""
        names = tuple(group)
        if names not in self._by_names:
            if not self.may_fit(names):
                self._by_names[names] = None
            else:
                key = self.signature(names)
                if key not in self._cache:
                    self._cache[key] = self._evaluate(names)
                self._by_names[names] = self._cache[key]
        return self._by_names[names]

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

    def _port_s(self, group: tuple[str, ...], per_step: float = 1.0) -> tuple[float, ...]:
        """Port seconds per layer of each stage: one prompt's KV of a layer, times `per_step`
        hand-offs per unit the DP compares it with (1 per prompt; a decoder's per step)."""
        b = self._handoff_layer_bytes * per_step
        return tuple(b * 8 / (self._ports[n].bandwidth_mbps * 1e6) for n in group)

    def _handoff(self, group: tuple[str, ...], part: Partition) -> tuple[float, float]:
        """(seconds of one prompt's KV hand-off over the ports, requests/s the ports carry)."""
        per_prompt = [
            n * self._handoff_layer_bytes * 8 / (self._ports[name].bandwidth_mbps * 1e6)
            for name, n in zip(group, part.counts, strict=True)
        ]
        lat = max(self._ports[name].latency_ms for name in group) / 1e3
        slowest = max(per_prompt)
        return lat + slowest, (1.0 / slowest if slowest > 0 else math.inf)

    def _costs(
        self,
        times: tuple[tuple[float, ...], ...],
        group_bytes: tuple[tuple[float, ...], ...],
        sequences: int,
        kv_s: tuple[float, ...] = (),
    ) -> StageCosts:
        return StageCosts(
            times[0], times[1], group_bytes[0], self._layer_bytes(sequences), group_bytes[1], kv_s
        )

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
        """Prefill and every decode concurrency of one group, in at most two batched splits
        (plus, where a decoder's ports bind, one more with the port term).

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
        prefill_times = self._times_of(group, batch=1, prefill=True)
        prompt = self._costs(prefill_times, gb, 1, self._port_s(group))
        first = self.split([prompt] + [costs[c] for c in rep.values()])
        self.splits_run += len(first)
        pre = first[0]
        if pre is None:
            return None
        handoff_s, _ = self._handoff(group, pre)
        prefill = PhaseEval(pre, 1, 1, pre.total_s, self._prompt / pre.bottleneck_s, handoff_s=handoff_s)
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
        decode: list[PhaseEval] = []
        for c in conc:
            part = parts[c]
            if part is None:
                break  # more sequences only need more KV memory
            token_s = max(part.total_s, micro[c] * part.bottleneck_s)
            if 1.0 / token_s >= self.shape.min_decode_tok_s:
                decode.append(self._decode_phase(group, part, c, micro[c], token_s))
        prompt_on = StageCosts(prefill_times[0], prefill_times[1], gb[0], self._layer_bytes(1))
        mixed = tuple(m for e in decode if (m := self._mixed(prompt_on, e)) is not None)
        return GroupEval(prefill, tuple(decode), self._decoders(group, decode, costs), mixed)

    def _decode_phase(
        self, group: tuple[str, ...], part: Partition, c: int, micro: int, token_s: float
    ) -> PhaseEval:
        return PhaseEval(part, c, micro, token_s, c / token_s, handoff_rps=self._handoff(group, part)[1])

    def _decoders(
        self, group: tuple[str, ...], decode: Sequence[PhaseEval], costs: dict[int, StageCosts]
    ) -> tuple[PhaseEval, ...]:
        """The decode choices as DECODER: where the ports cap a split below its compute rate,
        the split redone with the port term (per decode step), if that sustains more requests."""
        out = self.shape.mean_output_tokens
        bound = [e for e in decode if e.handoff_rps < e.rate_tok_s / out]
        if not bound:
            return ()
        redo = [
            dataclasses.replace(
                costs[e.concurrency], kv_s=self._port_s(group, e.concurrency / (e.micro_batches * out))
            )
            for e in bound
        ]
        self.splits_run += len(redo)
        better: dict[int, PhaseEval] = {}
        for e, part in zip(bound, self.split(redo), strict=True):
            if part is None:
                continue
            comp = Partition(part.counts, part.stage_s)  # token timing: compute only
            token_s = max(comp.total_s, e.micro_batches * comp.bottleneck_s)
            if 1.0 / token_s < self.shape.min_decode_tok_s:
                continue
            cand = self._decode_phase(group, comp, e.concurrency, e.micro_batches, token_s)
            if min(cand.rate_tok_s / out, cand.handoff_rps) > min(e.rate_tok_s / out, e.handoff_rps):
                better[e.concurrency] = cand
        return tuple(better.get(e.concurrency, e) for e in decode) if better else ()

    def _mixed(self, prompt_on: StageCosts, e: PhaseEval) -> MixedEval | None:
        """Both phases on the decode split at e's concurrency, or None below the speed floor."""
        stages = prompt_on.stage_s(e.partition.counts)
        bottleneck, latency = max(stages), sum(stages)
        p = 1.0 / bottleneck
        d = e.rate_tok_s / self.shape.mean_output_tokens
        rate = min(p * d / (p + d), p * (1.0 - self.shape.min_decode_tok_s * e.token_s))
        return MixedEval(e, bottleneck, latency, rate) if rate > 0 else None

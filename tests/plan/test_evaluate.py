"""Group evaluation: the timing model of a replica in each role, and its caches."""

from __future__ import annotations

import dataclasses

import pytest

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.evaluate import GroupEvaluator
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_spec import ModelSpec
from e2llm.specs.units import GIB

MODEL = ModelSpec(
    "m", n_layers=8, hidden=1024, n_heads=8, n_kv_heads=2, head_dim=128, intermediate=4096, vocab=1000
)


class LinearTimes:
    """Seconds per layer: prefill 1 ms per 100 tokens, decode 2 ms + 0.1 ms per sequence."""

    def __init__(self, speed: float):
        self.speed = speed

    def layer_prefill_s(self, tokens: int) -> float:
        return tokens * 1e-5 / self.speed

    def layer_decode_s(self, batch: int, context: int) -> float:
        return (2e-3 + 1e-4 * batch) / self.speed

    def head_s(self, tokens: int) -> float:
        return 0.0

    def embed_s(self, tokens: int) -> float:
        return 0.0


def cost_model(memory_gb: float = 2.0, speeds: tuple[float, ...] = (1.0, 1.0)) -> CostModel:
    devices = tuple(Device(f"d{i}", memory_gb, 1.0, 1.0) for i in range(len(speeds)))
    cluster = Cluster(devices, Link(bandwidth_mbps=1e12, latency_ms=0.0))  # free network
    return CostModel(MODEL, cluster, {d.name: LinearTimes(s) for d, s in zip(devices, speeds, strict=True)})


SHAPE = WorkloadShape(mean_input_tokens=1000, mean_output_tokens=100, interval_s=1.0, min_decode_tok_s=10.0)


def test_prefill_pipelines_prompts_and_decode_micro_batches() -> None:
    ev = GroupEvaluator(cost_model(), SHAPE)
    got = ev.evaluate(("d0", "d1"))
    assert got is not None
    assert got.prefill.partition.counts == (4, 4)
    stage = 4 * 1000 * 1e-5
    assert got.prefill.token_s == pytest.approx(2 * stage)  # one prompt crosses both stages
    assert got.prefill.rate_tok_s == pytest.approx(1000 / stage)  # a new prompt every stage time
    by_c = {e.concurrency: e for e in got.decode}
    # c = 1: one micro-batch, the round trip is both stages at batch 1
    assert by_c[1].token_s == pytest.approx(2 * 4 * 2.1e-3)
    # c = 6: two micro-batches of 3 in flight; each request waits for both to pass the bottleneck
    six = by_c[6]
    assert six.micro_batches == 2
    assert six.token_s == pytest.approx(2 * 4 * 2.3e-3)
    assert six.rate_tok_s == pytest.approx(6 / six.token_s)
    rates = got.rates(SHAPE)
    assert rates.prefill_rps == pytest.approx(got.prefill.rate_tok_s / 1000)
    assert rates.best_decode() is not None


def test_decoders_respect_the_speed_floor_and_memory() -> None:
    floor = dataclasses.replace(SHAPE, min_decode_tok_s=15.0)
    got = GroupEvaluator(cost_model(speeds=(0.3, 0.3)), floor).evaluate(("d0", "d1"))
    assert got is not None  # ~18 tok/s per request at batch 1, ~13 at 16
    assert all(1.0 / e.token_s >= 15.0 for e in got.decode)
    assert 0 < len(got.decode) < 16  # the floor cuts off the large batches
    # long contexts: KV of a few sequences fills what the weights leave
    long = WorkloadShape(
        mean_input_tokens=6000, mean_output_tokens=2192, interval_s=1.0, min_decode_tok_s=0.0
    )
    roomy = GroupEvaluator(cost_model(memory_gb=4.0), long).evaluate(("d0", "d1"))
    tight = GroupEvaluator(cost_model(memory_gb=0.95), long).evaluate(("d0", "d1"))
    assert roomy is not None and tight is not None
    assert [e.concurrency for e in roomy.decode] == list(range(1, 17))
    kv_per_seq = sum(MODEL.kv_bytes_per_token(i) * 8192 for i in range(MODEL.n_layers))
    room = (
        2 * (0.95 * GIB - RUNTIME_OVERHEAD_BYTES) - 8 * MODEL.layer_weight_bytes - 2 * MODEL.embedding_bytes
    )
    assert 1 <= max(e.concurrency for e in tight.decode) <= room / kv_per_seq < 16


def test_group_that_cannot_hold_the_model() -> None:
    ev = GroupEvaluator(cost_model(memory_gb=0.76), SHAPE)
    assert not ev.may_fit(("d0", "d1"))
    assert ev.evaluate(("d0", "d1")) is None and ev.rates(("d0", "d1")) is None


def test_identical_devices_share_one_evaluation() -> None:
    ev = GroupEvaluator(cost_model(speeds=(1.0, 1.0, 2.0)), SHAPE)
    ev.evaluate(("d0", "d2"))
    runs = ev.splits_run
    ev.evaluate(("d1", "d2"))  # d1 has d0's specs and links: cached
    assert ev.splits_run == runs
    ev.evaluate(("d2", "d0"))  # another order is another pipeline
    assert ev.splits_run > runs


def test_prefill_split_keeps_kv_off_a_slow_port() -> None:
    """A device on a slow link ships its layers' KV slowly: the prefill split gives it fewer
    layers than speed alone would, and a prompt's latency includes the hand-off."""
    devices = tuple(Device(f"d{i}", 2.0, 1.0, 1.0) for i in range(3))
    wifi = Link(bandwidth_mbps=100.0, latency_ms=3.0)
    cluster = Cluster(
        devices, Link(1e12, 0.0), {frozenset(("d1", "d0")): wifi, frozenset(("d1", "d2")): wifi}
    )
    times = {"d0": LinearTimes(1.0), "d1": LinearTimes(1.0), "d2": LinearTimes(1.0)}
    got = GroupEvaluator(CostModel(MODEL, cluster, times), SHAPE).evaluate(("d0", "d1"))
    free = GroupEvaluator(cost_model(), SHAPE).evaluate(("d0", "d1"))
    assert got is not None and free is not None
    assert free.prefill.partition.counts == (4, 4)
    assert got.prefill.partition.counts[1] < 4  # d1's port: 100 Mbit/s
    kv_layer = MODEL.kv_bytes_per_token(0) * 1000
    n1 = got.prefill.partition.counts[1]
    assert got.prefill.partition.port_s[1] == pytest.approx(n1 * kv_layer * 8 / 100e6)
    assert got.prefill.handoff_s == pytest.approx(3e-3 + n1 * kv_layer * 8 / 100e6)
    assert got.prefill.rate_tok_s == pytest.approx(1000 / got.prefill.partition.bottleneck_s)


def test_mixed_shares_its_time_between_the_phases() -> None:
    ev = GroupEvaluator(cost_model(), SHAPE)
    got = ev.evaluate(("d0", "d1"))
    assert got is not None and got.mixed
    for m in got.mixed:
        p = 1.0 / m.prefill_bottleneck_s
        d = m.phase.rate_tok_s / SHAPE.mean_output_tokens
        assert m.rate_rps == pytest.approx(
            min(p * d / (p + d), p * (1 - SHAPE.min_decode_tok_s * m.phase.token_s))
        )
        # at that rate, decoding in the time prompts leave keeps the speed floor
        assert (1 - m.rate_rps / p) / m.phase.token_s >= SHAPE.min_decode_tok_s * (1 - 1e-9)
    rates = got.rates(SHAPE)
    assert rates.mixed is not None and rates.mixed.rate_rps == max(m.rate_rps for m in got.mixed)


def test_decoder_rate_is_capped_by_the_kv_its_ports_receive() -> None:
    """Short outputs: a decoder finishes requests fast and must receive every one's KV; where its
    ports cap the rate the split is redone with the port term, and kept if it sustains more."""
    devices = tuple(Device(f"d{i}", 2.0, 1.0, 1.0) for i in range(3))
    slow = {frozenset(("d0", o)): Link(20.0, 1.0) for o in ("d1", "d2")}  # d0's port: 20 Mbit/s
    cluster = Cluster(devices, Link(1e4, 0.0), slow)
    times = {d.name: LinearTimes(1.0) for d in devices}
    short = WorkloadShape(mean_input_tokens=1000, mean_output_tokens=4, interval_s=1.0, min_decode_tok_s=1.0)
    got = GroupEvaluator(CostModel(MODEL, cluster, times), short).evaluate(("d0", "d1"))
    assert got is not None and got.decoder  # the ports bind
    for compute, dec in zip(got.decode, got.decoder, strict=True):
        assert compute.handoff_rps < compute.rate_tok_s / 4  # capped on the compute split
        assert min(dec.rate_tok_s / 4, dec.handoff_rps) >= min(compute.rate_tok_s / 4, compute.handoff_rps)
    better = [d for c, d in zip(got.decode, got.decoder, strict=True) if d is not c]
    assert better and all(d.partition.counts[0] < 4 for d in better)  # fewer layers behind the slow port
    best = got.rates(short).best_decode()
    assert best is not None and best.rate_rps < best.compute_rps

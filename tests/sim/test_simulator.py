"""Hand-computed timelines through the simulator, disaggregated and co-located."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from simkit import TINY, LinearTimes, cost_model, plan, replica

from e2llm.plan.types import Role
from e2llm.sim.metrics import max_concurrent, summarize
from e2llm.sim.simulator import simulate
from e2llm.specs.workload import Request


def _disaggregated(concurrency: int = 4):
    p = plan(
        replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]),
        replica(1, Role.DECODER, [("c", 0, 4)], concurrency=concurrency),
    )
    return p


def test_one_request_every_timestamp() -> None:
    cost = cost_model(["a", "b", "c"])
    result = simulate(_disaggregated(), cost, [Request(0, 0.0, 100, 5)])
    [r] = result.records
    assert r.prefill_start_s == 0.0
    # stage a: 2 layers x 100 tokens x 1 ms = 0.2; hop: 100 x 100 B at 1e6 B/s + 1 ms = 0.011;
    # stage b: 0.2 + LM head on one row 0.005
    assert r.prefill_end_s == pytest.approx(0.2 + 0.011 + 0.205)
    # KV: layers 0-2 from a and 2-4 from b to c, each 2 x 256 B x 100 = 51,200 B, on two links
    assert r.kv_start_s == r.prefill_end_s
    assert r.kv_end_s == pytest.approx(0.416 + 0.0512 + 0.001)
    # TTFT (DESIGN): the first token leaves the prefill replica when its prompt is done; the
    # hand-off and the first decode step show in the second token instead
    assert r.first_token_s == r.prefill_end_s
    assert r.decode_admit_s == r.kv_end_s
    assert r.second_token_at_s == pytest.approx(r.kv_end_s + 0.045)
    assert r.second_token_gap_s == pytest.approx(0.0512 + 0.001 + 0.045)
    assert r.kv_transfer_s == pytest.approx(0.0512 + 0.001)
    # 4 more tokens, one stage: 4 layers x 10 ms + head 5 ms = 45 ms a step
    assert r.last_token_s == pytest.approx(0.4682 + 4 * 0.045)
    assert r.prefill_replica == 0 and r.decode_replica == 1
    assert r.waiting_s == pytest.approx(0.0)
    # busy intervals: each prefill stage once, the decoder for the whole decode
    assert result.busy["a"] == [(0.0, pytest.approx(0.2), 1.0)]
    assert result.busy["b"] == [(pytest.approx(0.211), pytest.approx(0.416), 1.0)]
    assert result.busy["c"] == [(pytest.approx(0.4682), pytest.approx(0.6482), 1.0)]


def test_second_request_joins_batch_at_step_boundary() -> None:
    times = LinearTimes(decode_s_per_seq=0.01)  # a step of batch 2 costs 4 x 20 ms + 2 x 5 ms
    cost = cost_model(["a", "b", "c"], times)
    reqs = [Request(0, 0.0, 100, 21), Request(1, 0.5, 100, 3)]
    result = simulate(_disaggregated(), cost, reqs)
    r0, r1 = result.records
    t0 = r0.decode_admit_s
    assert t0 == pytest.approx(0.4682)
    # r1's KV arrives at 0.5 + 0.4682; r0 is mid-step, r1 is admitted at the next boundary
    arrive = 0.5 + 0.4682
    steps = int((arrive - t0) / 0.045) + 1
    assert r1.kv_end_s == pytest.approx(arrive)
    assert r1.decode_admit_s == pytest.approx(t0 + steps * 0.045)
    assert r1.waiting_s == pytest.approx(r1.decode_admit_s - arrive)
    # r1 needs 2 steps at batch 2 (0.09 s each); r0 does the rest of its 20 at batch 1
    assert r1.last_token_s == pytest.approx(r1.decode_admit_s + 2 * 0.09)
    rest = 20 - steps - 2
    assert r0.last_token_s == pytest.approx(r1.last_token_s + rest * 0.045)
    # the interrupted segment counts as busy only until the interruption: no overlaps
    spans = sorted(result.busy["c"])
    assert all(a[1] <= b[0] + 1e-12 for a, b in itertools.pairwise(spans))
    assert spans[0][0] == pytest.approx(t0) and spans[-1][1] == pytest.approx(r0.last_token_s)


def test_decoder_concurrency_makes_requests_wait() -> None:
    cost = cost_model(["a", "b", "c"])
    reqs = [Request(0, 0.0, 100, 11), Request(1, 0.0, 100, 11)]
    r0, r1 = simulate(_disaggregated(concurrency=1), cost, reqs).records
    # prompts pipeline: r1 enters stage a when r0 leaves it (0.2)
    assert r1.prefill_start_s == pytest.approx(0.2)
    assert r1.prefill_end_s == pytest.approx(r0.prefill_end_s + 0.205)  # stage b is the bottleneck
    assert r1.decode_admit_s == pytest.approx(r0.last_token_s)
    # r1 reaches stage b 0.2 s after r0 but b takes 0.205 s: 5 ms queued inside the pipeline
    assert r1.prefill_queued_s == pytest.approx(0.005)
    assert r1.waiting_s == pytest.approx(0.2 + 0.005 + (r0.last_token_s - r1.kv_end_s))


def test_colocated_one_request() -> None:
    cost = cost_model(["a", "b"])
    p = plan(replica(0, Role.COLOCATED, [("a", 0, 2), ("b", 2, 4)], concurrency=1))
    [r] = simulate(p, cost, [Request(0, 1.0, 100, 3)]).records
    assert r.prefill_start_s == 1.0
    assert r.prefill_end_s == pytest.approx(1.0 + 0.2 + 0.011 + 0.205)
    assert r.kv_start_s is None and r.kv_end_s is None
    assert r.first_token_s == r.prefill_end_s == r.decode_admit_s
    # decode step over 2 stages, batch 1 (one micro-batch): 20 ms + hop (100 B: 1.1 ms)
    # + 25 ms + token ids back (4 B: ~1 ms)
    step = 0.02 + (100 / 1e6 + 0.001) + 0.025 + (4 / 1e6 + 0.001)
    assert r.last_token_s == pytest.approx(r.first_token_s + 2 * step)
    assert r.waiting_s == pytest.approx(0.0)


def test_colocated_queue_waits_for_a_slot() -> None:
    cost = cost_model(["a"])
    p = plan(replica(0, Role.COLOCATED, [("a", 0, 4)], concurrency=1))
    r0, r1 = simulate(p, cost, [Request(0, 0.0, 100, 3), Request(1, 0.0, 50, 2)]).records
    # r0: prefill 4 x 0.1 + 0.005, then 2 steps of 0.045
    assert r0.last_token_s == pytest.approx(0.405 + 0.09)
    assert r1.prefill_start_s == pytest.approx(r0.last_token_s)
    assert r1.waiting_s == pytest.approx(r0.last_token_s)
    assert r1.ttft_s == pytest.approx(r0.last_token_s + 4 * 0.05 + 0.005)


def test_colocated_prefill_interrupts_decoding() -> None:
    cost = cost_model(["a"])
    p = plan(replica(0, Role.COLOCATED, [("a", 0, 4)], concurrency=2))
    r0, r1 = simulate(p, cost, [Request(0, 0.0, 100, 30), Request(1, 0.5, 100, 2)]).records
    boundary = 0.405 + (int((0.5 - 0.405) / 0.045) + 1) * 0.045
    assert r1.prefill_start_s == pytest.approx(boundary)
    assert r1.first_token_s == pytest.approx(boundary + 0.405)
    # r0 did 3 steps, paused for r1's prefill, 1 step at batch 2 (4 x 10 ms + 2 heads), 25 alone
    assert r1.last_token_s == pytest.approx(boundary + 0.405 + 0.05)
    assert r0.last_token_s == pytest.approx(r1.last_token_s + 25 * 0.045)


def test_output_of_one_token_needs_no_decoder() -> None:
    cost = cost_model(["a", "b", "c"])
    [r] = simulate(_disaggregated(), cost, [Request(0, 0.0, 100, 1)]).records
    assert r.completed and r.last_token_s == r.first_token_s == r.prefill_end_s
    assert r.decode_replica is None and r.kv_start_s is None


def test_too_large_request_fails_others_complete() -> None:
    # 2 GB devices, 0.75 GB overhead: ~1.25 GB of KV per device -> 1 KiB per token on c
    cost = cost_model(["a", "b", "c"], model=replace(TINY, max_context=10**7))
    big = 1_400_000  # tokens: 1,400,000 x 1 KiB > 1.25 GB on the decoder
    reqs = [Request(0, 0.0, 100, 5), Request(1, 0.1, big - 10, 10), Request(2, 0.2, 100, 5)]
    recs = simulate(_disaggregated(), cost, reqs).records
    assert [r.completed for r in recs] == [True, False, True]
    assert "KV" in (recs[1].failed or "")
    m = summarize(recs)
    assert (m["completed"], m["failed"]) == (2, 1)


def test_context_longer_than_model_fails() -> None:
    cost = cost_model(["a", "b", "c"])
    [r] = simulate(_disaggregated(), cost, [Request(0, 0.0, 9000, 5)]).records
    assert not r.completed and "context" in (r.failed or "")


def _random_requests(n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(2.0)
        out.append(Request(i, t, rng.randint(10, 400), rng.randint(1, 60)))
    return out


def test_every_request_accounted_and_deterministic() -> None:
    cost = cost_model(["a", "b", "c", "d", "e"])
    p = plan(
        replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]),
        replica(1, Role.DECODER, [("c", 0, 1), ("d", 1, 4)], concurrency=3),
        replica(2, Role.DECODER, [("e", 0, 4)], concurrency=2),
    )
    reqs = _random_requests(400, seed=3)
    a = simulate(p, cost, reqs)
    b = simulate(p, cost, reqs)
    assert a.records == b.records
    assert all(r.completed for r in a.records)
    for r in a.records:
        assert r.arrival_s <= r.prefill_start_s <= r.prefill_end_s <= r.first_token_s <= r.last_token_s  # type: ignore[operator]
        if r.output_tokens > 1:
            assert r.kv_end_s <= r.decode_admit_s <= r.last_token_s  # type: ignore[operator]
    m = summarize(a.records)
    assert 1 <= m["max_concurrent_decode"] <= 5
    for rid, limit in ((1, 3), (2, 2)):  # no decoder ever runs more than its concurrency
        spans = [(r.decode_admit_s, r.last_token_s) for r in a.records if r.decode_replica == rid]
        assert max_concurrent(spans) == limit  # type: ignore[arg-type]
    assert {r.decode_replica for r in a.records if r.output_tokens > 1} == {1, 2}


def test_splitwise_scheduler_uses_both_pools() -> None:
    cost = cost_model(["a", "b", "c", "d"])
    p = plan(
        replica(0, Role.PREFILL, [("a", 0, 4)]),
        replica(1, Role.PREFILL, [("b", 0, 4)]),
        replica(2, Role.DECODER, [("c", 0, 4)], concurrency=2),
        replica(3, Role.DECODER, [("d", 0, 4)], concurrency=2),
        scheduler="splitwise",
    )
    recs = simulate(p, cost, _random_requests(200, seed=5)).records
    assert all(r.completed for r in recs)
    assert {r.prefill_replica for r in recs} == {0, 1}
    assert {r.decode_replica for r in recs if r.output_tokens > 1} == {2, 3}


def test_decoder_admits_up_to_its_concurrency_at_once() -> None:
    # one-token prompts r1, r2 reach the decoder before r0's KV; r1 starts a long step (0.405 s),
    # r2 and r0 arrive during it and must both join at its end (3 slots)
    cost = cost_model(["a", "b", "c"], LinearTimes(decode_s=0.1))
    reqs = [Request(0, 0.0, 100, 10), Request(1, 0.0, 1, 10), Request(2, 0.0, 1, 10)]
    r0, r1, r2 = simulate(_disaggregated(concurrency=3), cost, reqs).records
    assert r1.kv_end_s < r2.kv_end_s < r0.kv_end_s < r1.decode_admit_s + 0.405  # type: ignore[operator]
    assert r2.decode_admit_s == r0.decode_admit_s == pytest.approx(r1.decode_admit_s + 0.405)


def test_kv_split_by_layer_ranges_of_both_replicas() -> None:
    # prefill a[0,2) b[2,4) -> decoder c[0,1) d[1,4): parts a->c (1 layer), a->d (1), b->d (2)
    cost = cost_model(["a", "b", "c", "d"])
    p = plan(
        replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]),
        replica(1, Role.DECODER, [("c", 0, 1), ("d", 1, 4)], concurrency=2),
    )
    result = simulate(p, cost, [Request(0, 0.0, 100, 2)])
    [r] = result.records
    # the largest part, b->d: 2 layers x 256 B x 100 tokens = 51,200 B at 1e6 B/s + 1 ms
    assert r.kv_end_s == pytest.approx(r.prefill_end_s + 0.0512 + 0.001)
    # 3 KV parts (25,600 + 25,600 + 51,200 B) and one 100-token hop (10,000 B)
    assert result.network_bytes == pytest.approx(102_400 + 10_000)


def test_concurrent_kv_transfers_share_the_link() -> None:
    # fast prefill (0.045 s per 1000-token prompt), slow KV (1,024,000 B = 1.024 s alone)
    cost = cost_model(["a", "c"], LinearTimes(prefill_s_per_token=1e-5))
    p = plan(replica(0, Role.PREFILL, [("a", 0, 4)]), replica(1, Role.DECODER, [("c", 0, 4)], concurrency=2))
    r0, r1 = simulate(p, cost, [Request(0, 0.0, 1000, 2), Request(1, 0.0, 1000, 2)]).records
    assert r1.kv_start_s == pytest.approx(0.09)
    # r0 alone for 0.045 s (45,000 B), then both at half speed until r0 is done, then r1 alone
    assert r0.kv_end_s == pytest.approx(0.09 + 979_000 / 0.5e6 + 0.001)
    assert r1.kv_end_s == pytest.approx(0.09 + 979_000 / 0.5e6 + 45_000 / 1e6 + 0.001)


def test_colocated_random_load_invariants() -> None:
    cost = cost_model(["a", "b", "c"])
    p = plan(
        replica(0, Role.COLOCATED, [("a", 0, 2), ("b", 2, 4)], concurrency=3),
        replica(1, Role.COLOCATED, [("c", 0, 4)], concurrency=2),
    )
    reqs = _random_requests(300, seed=11)
    a, b = simulate(p, cost, reqs), simulate(p, cost, reqs)
    assert a.records == b.records
    assert all(r.completed and r.kv_start_s is None for r in a.records)
    for rid, limit in ((0, 3), (1, 2)):
        spans = [(r.prefill_start_s, r.last_token_s) for r in a.records if r.decode_replica == rid]
        assert 1 <= max_concurrent(spans) <= limit  # type: ignore[arg-type]
    for r in a.records:
        assert r.waiting_s == pytest.approx(r.prefill_start_s - r.arrival_s)  # type: ignore[operator]

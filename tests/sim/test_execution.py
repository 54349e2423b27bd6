"""How the engine runs a plan (`sim.execution`): the ideal pipelined engine vs `e2llm serve`'s
step barrier and KV imports that pause decoding — each against hand-computed timings."""

from __future__ import annotations

import pytest
from simkit import cost_model, plan, replica

from e2llm.plan.types import Role
from e2llm.sim.execution import IDEAL, RAY_RUNTIME, Execution
from e2llm.sim.simulator import ServingContext, simulate
from e2llm.sim.state import decode_step
from e2llm.specs.workload import Request


def test_a_step_barrier_costs_the_pipelines_fill_and_drain() -> None:
    # Two stages of 2 layers x 10 ms (+ 5 ms LM head on the second); batch 2 -> 2 micro-batches of 1.
    cost = cost_model(["a", "b"])
    stages = replica(0, Role.DECODER, [("a", 0, 2), ("b", 2, 4)], concurrency=2).stages
    t_a, t_b = 0.020, 0.025
    hops = cost.hop_s("a", "b", 1) + cost.transfer_s("b", "a", 4.0)
    lap = t_a + t_b + hops
    ideal, _ = decode_step(cost, stages, 2, 64)
    barrier, shares = decode_step(cost, stages, 2, 64, barrier=True)
    assert ideal == pytest.approx(max(lap, 2 * t_b))  # micro-batches cycle without waiting
    assert barrier == pytest.approx(lap + t_b)  # one lap plus the second micro-batch on the slowest
    assert shares == [pytest.approx(2 * t_a / barrier), pytest.approx(2 * t_b / barrier)]
    # One sequence, or one stage: nothing to overlap, both engines agree.
    assert decode_step(cost, stages, 1, 64, barrier=True) == decode_step(cost, stages, 1, 64)
    one = replica(0, Role.DECODER, [("a", 0, 4)], concurrency=4).stages
    assert decode_step(cost, one, 4, 64, barrier=True) == decode_step(cost, one, 4, 64)


def _pd_plan():
    return plan(
        replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]),
        replica(1, Role.DECODER, [("c", 0, 4)], concurrency=4),
    )


def _run(execution: Execution, requests: list[Request]):
    cost = cost_model(["a", "b", "c"])
    return simulate(_pd_plan(), cost, requests, ServingContext(execution=execution)).records


def test_a_kv_import_pauses_the_decoders_running_sequences_until_it_is_in() -> None:
    # r0 decodes 200 tokens at 45 ms a step; r1's prompt (1000 tokens: 0.51 MB of KV per prefill
    # stage, over 1 MB/s links) is handed off to the same decoder while r0 decodes.
    reqs = [Request(0, 0.0, 10, 200), Request(1, 1.0, 1000, 2)]
    ideal_r0, ideal_r1 = _run(IDEAL, reqs)
    ray_r0, ray_r1 = _run(Execution(kv_import_pauses_decode=True), reqs)
    transfer = ray_r1.kv_end_s - ray_r1.kv_start_s
    assert transfer == pytest.approx(0.512 + 0.001)
    assert ideal_r1.kv_end_s == pytest.approx(ray_r1.kv_end_s)  # the transfer itself is the same
    # r0 stops at the first step boundary after the hand-off starts and goes on when the KV is in:
    # it loses the transfer time minus the part of a step that was already under way.
    lost = ray_r0.last_token_s - ideal_r0.last_token_s
    step = 0.045
    assert transfer - step <= lost <= transfer + 1e-9
    # The paused decoder still admits r1 once its KV is in; r1 then decodes as before.
    assert ray_r1.decode_admit_s == pytest.approx(ray_r1.kv_end_s)


def test_with_ray_runtime_the_kv_export_waits_for_the_prompts_already_sent_to_the_stage() -> None:
    # Prefill: 1 ms per token per layer, 2 layers a stage: r0 (100 tokens) takes 0.2 s a stage;
    # r1 (2000 tokens, 4 s a stage) enters right after r0 leaves stage a. r0's KV export from
    # stage b must wait until b has done r1 too (its call was sent before the export).
    reqs = [Request(0, 0.0, 100, 3), Request(1, 0.2, 2000, 1)]  # r1 needs no hand-off itself
    ideal_r0, _ = _run(IDEAL, reqs)
    ray_r0, ray_r1 = _run(RAY_RUNTIME, reqs)
    assert ideal_r0.kv_end_s == pytest.approx(ideal_r0.prefill_end_s + 0.0512 + 0.001)
    assert ray_r1.prefill_end_s > ray_r0.prefill_end_s + 4
    # the part from stage a leaves once a is done with r1 (at 4.2 s), the one from b once b is
    assert ray_r0.kv_end_s == pytest.approx(ray_r1.prefill_end_s + 0.0512 + 0.001, abs=1e-6)


def test_every_request_completes_with_the_ray_runtime_traits() -> None:
    reqs = [Request(i, 0.3 * i, 50 + 37 * (i % 5), 2 + i % 7) for i in range(40)]
    records = _run(RAY_RUNTIME, reqs)
    assert all(r.completed for r in records)
    assert all(
        r.kv_end_s is not None and r.kv_end_s >= r.prefill_end_s for r in records if r.output_tokens > 1
    )


def test_a_colocated_prompt_starts_at_once_and_the_step_under_way_finishes_after_it() -> None:
    # One COLOCATED replica on one device (4 layers x 10 ms + 5 ms head = 45 ms a step). r0
    # decodes; r1 arrives 20 ms into a step. The ideal engine starts r1 at the next step boundary;
    # e2llm serve sends r1's stage calls at once, after the decode call under way.
    p = plan(replica(0, Role.COLOCATED, [("a", 0, 4)], concurrency=4))
    cost = cost_model(["a"])
    r0_prefill = 0.4 + 0.005  # 100 tokens x 4 layers x 1 ms + the LM head's row
    arrival = r0_prefill + 3 * 0.045 + 0.020
    reqs = [Request(0, 0.0, 100, 40), Request(1, arrival, 50, 2)]
    ideal = simulate(p, cost, reqs, ServingContext(execution=IDEAL)).records
    ray = simulate(p, cost, reqs, ServingContext(execution=Execution(prompts_interleave=True))).records
    assert ideal[1].prefill_start_s == pytest.approx(r0_prefill + 4 * 0.045)
    assert ray[1].prefill_start_s == pytest.approx(arrival)
    assert ray[1].first_token_s == pytest.approx(arrival + 50 * 4 * 0.001 + 0.005)
    # r0 loses the same time either way (the prompt's), nothing else: the cut step is finished.
    assert ray[0].last_token_s == pytest.approx(ideal[0].last_token_s)


def test_a_hand_off_starts_when_the_decoders_step_under_way_ends() -> None:
    # As above: r0 decodes at 45 ms a step on c when r1's prompt is done. e2llm serve's decoder
    # admits r1, and only then starts moving its KV, at the top of its loop: the next boundary.
    reqs = [Request(0, 0.0, 10, 200), Request(1, 1.0, 1000, 2)]
    pauses, at_boundary = Execution(kv_import_pauses_decode=True), RAY_RUNTIME
    early_r0, early_r1 = _run(pauses, reqs)
    r0, r1 = _run(at_boundary, reqs)
    assert early_r1.kv_start_s == pytest.approx(early_r1.prefill_end_s)
    assert r1.prefill_end_s == pytest.approx(early_r1.prefill_end_s)
    step = 0.045
    waited = r1.kv_start_s - r1.prefill_end_s
    assert 0 < waited <= step + 1e-9
    steps = (r1.kv_start_s - r0.decode_admit_s) / step
    assert steps == pytest.approx(round(steps), abs=1e-6)  # exactly on one of r0's step boundaries
    assert r1.kv_end_s - r1.kv_start_s == pytest.approx(early_r1.kv_end_s - early_r1.kv_start_s)
    # r0 still pauses from that boundary until the KV is in: it now loses the whole transfer.
    assert r0.last_token_s - early_r0.last_token_s == pytest.approx(waited, abs=1e-6)

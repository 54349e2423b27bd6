"""MIXED replicas (chunked prefill), run-time role switching, and Splitwise's mixed pool."""

from __future__ import annotations

import itertools
import random

import pytest
from simkit import LinearTimes, cost_model, plan, replica

from e2llm.plan.types import Role
from e2llm.policy.settings import PolicySettings
from e2llm.sim.metrics import max_concurrent, summarize
from e2llm.sim.simulator import ServingContext, SimResult, simulate
from e2llm.specs.workload import Request


def _phased(n: int, gap_s: float, seed: int, phases) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (a, b), (c, d) = phases[i * len(phases) // n]
        out.append(Request(i, (i + 1) * gap_s, rng.randint(a, b), rng.randint(c, d)))
    return out


def _role_at(result: SimResult, plan_roles: dict[int, Role], rid: int, t: float) -> Role:
    role = plan_roles[rid]
    for when, r, new in result.roles:
        if r == rid and when <= t:
            role = Role(new)
    return role


# --- MIXED --------------------------------------------------------------------------------------
def test_mixed_chunks_a_prompt_beside_the_decode_batch() -> None:
    cost = cost_model(["a"])
    p = plan(replica(0, Role.MIXED, [("a", 0, 4)], concurrency=2))
    ctx = ServingContext(PolicySettings(chunk_tokens=128))
    r0, r1 = simulate(p, cost, [Request(0, 0.0, 100, 5), Request(1, 0.5, 300, 3)], ctx).records

    def prefill(t: int) -> float:  # 4 layers x 1 ms per token + the LM head's row
        return 0.004 * t + 0.005

    assert r0.first_token_s == pytest.approx(prefill(100))  # one chunk: 100 <= 128
    # r0 decodes 0.045 s steps; r1 arrives at 0.5 and is admitted at the next boundary (3rd step)
    start = prefill(100) + 3 * 0.045
    assert r1.prefill_start_s == pytest.approx(start)
    # iteration 1: r0's last step + 127 prompt tokens; then 128 alone; then the last 45
    t1 = start + 0.045 + prefill(127)
    assert r0.last_token_s == pytest.approx(t1)
    t2 = t1 + prefill(255) - prefill(127)
    t3 = t2 + prefill(300) - prefill(255)
    assert r1.first_token_s == r1.prefill_end_s == pytest.approx(t3)
    assert r1.second_token_at_s == pytest.approx(t3 + 0.045)
    assert r1.last_token_s == pytest.approx(t3 + 2 * 0.045)
    assert r1.kv_start_s is None and r1.decode_replica == r1.prefill_replica == 0
    assert r1.waiting_s == pytest.approx(start - 0.5)


def test_mixed_beside_prefill_and_decoder_replicas() -> None:
    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002))
    p = plan(
        replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]),
        replica(1, Role.MIXED, [("c", 0, 4)], concurrency=3),
        replica(2, Role.DECODER, [("d", 0, 4)], concurrency=3),
    )
    reqs = _phased(200, 0.4, 2, [((100, 400), (20, 60))])
    res = simulate(p, cost, reqs, ServingContext(PolicySettings(chunk_tokens=128)))
    recs = res.records
    assert all(r.completed for r in recs)
    on_mixed = [r for r in recs if r.prefill_replica == 1]
    assert on_mixed and all(r.decode_replica == 1 and r.kv_start_s is None for r in on_mixed)
    shipped = [r for r in recs if r.prefill_replica == 0]
    assert shipped and {r.decode_replica for r in shipped} <= {1, 2}
    spans = [(r.decode_admit_s or r.prefill_start_s, r.last_token_s) for r in on_mixed]
    assert max_concurrent(spans) <= 3  # type: ignore[arg-type]  # prompts hold their slot from the first chunk


# --- role switching -------------------------------------------------------------------------------
def _adaptive_plan():
    return plan(
        replica(0, Role.PREFILL, [("a", 0, 4)]),
        replica(1, Role.DECODER, [("b", 0, 4)], concurrency=4),
        replica(2, Role.DECODER, [("c", 0, 4)], concurrency=4),
        replica(3, Role.DECODER, [("d", 0, 4)], concurrency=4),
    )


def test_switching_follows_the_load_and_waits_less() -> None:
    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002))
    p = _adaptive_plan()
    reqs = _phased(300, 0.25, 1, [((200, 400), (2, 10)), ((10, 30), (100, 200))])
    on = PolicySettings(adapt=True, ttft_budget_s=1.0, min_dwell_s=5.0)
    fixed = simulate(p, cost, reqs, ServingContext(PolicySettings(adapt=False, ttft_budget_s=1.0)))
    adaptive = simulate(p, cost, reqs, ServingContext(on))
    assert fixed.role_switches == 0 and fixed.roles == ()
    assert adaptive.role_switches == len(adaptive.roles) >= 2
    assert all(r.completed for r in adaptive.records)
    # prompt-heavy first: a decoder moves to PREFILL; decode-heavy later: one moves back
    assert adaptive.roles[0][2] == "PREFILL" and any(new == "DECODER" for _, _, new in adaptive.roles)
    wait = {k: summarize(res.records)["waiting_time_s"]["mean"] for k, res in (("f", fixed), ("a", adaptive))}
    assert wait["a"] < 0.7 * wait["f"]
    # protocol: a replica only ever prefills while PREFILL and decodes while DECODER
    roles = {r.id: r.role for r in p.replicas}
    for r in adaptive.records:
        assert _role_at(adaptive, roles, r.prefill_replica, r.prefill_start_s) is Role.PREFILL  # type: ignore[arg-type]
        if r.decode_admit_s is not None:
            assert _role_at(adaptive, roles, r.decode_replica, r.decode_admit_s) is Role.DECODER  # type: ignore[arg-type]
    # dwell: a replica keeps each role at least min_dwell_s
    for rid in roles:
        times = [t for t, r, _ in adaptive.roles if r == rid]
        assert all(b - a >= on.min_dwell_s for a, b in itertools.pairwise(times))


def test_no_switch_without_pressure() -> None:
    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002))
    reqs = _phased(60, 2.0, 4, [((10, 50), (5, 10))])
    res = simulate(_adaptive_plan(), cost, reqs, ServingContext(PolicySettings(adapt=True)))
    assert res.role_switches == 0


# --- Splitwise's mixed pool ---------------------------------------------------------------------
def _splitwise():
    return plan(
        replica(0, Role.PREFILL, [("a", 0, 4)]),
        replica(1, Role.PREFILL, [("b", 0, 4)]),
        replica(2, Role.DECODER, [("c", 0, 4)], concurrency=8),
        replica(3, Role.DECODER, [("d", 0, 4)], concurrency=8),
        scheduler="splitwise",
    )


def test_long_prompt_queue_borrows_a_token_machine_which_returns_when_idle() -> None:
    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002))
    reqs = _phased(40, 0.1, 5, [((3000, 4000), (2, 5))])  # 130k prompt tokens in 4 s
    res = simulate(_splitwise(), cost, reqs)
    assert all(r.completed for r in res.records)
    borrowed = [(t, rid) for t, rid, new in res.roles if new == "COLOCATED"]
    assert borrowed and {rid for _, rid in borrowed} <= {2, 3}  # token machines, for prompts
    # a borrowed token machine prefilled prompts, and went back to DECODER afterwards
    assert any(r.prefill_replica in (2, 3) for r in res.records)
    assert {rid for _, rid, new in res.roles if new == "DECODER"} == {rid for _, rid in borrowed}


def test_short_prompt_queue_borrows_nothing() -> None:
    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002))
    reqs = _phased(40, 1.0, 6, [((100, 300), (2, 5))])
    res = simulate(_splitwise(), cost, reqs)
    assert res.role_switches == 0 and all(r.prefill_replica in (0, 1) for r in res.records)


def test_full_token_memory_borrows_a_prompt_machine() -> None:
    # 0.76 GB devices: ~10 MB of KV each, ~40k tokens: a few long requests fill a token machine
    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002), memory_gb=0.76)
    reqs = _phased(60, 0.2, 3, [((2000, 4000), (200, 300))])
    res = simulate(_splitwise(), cost, reqs)
    assert all(r.completed for r in res.records)
    lent = {rid for _, rid, new in res.roles if new == "COLOCATED"} & {0, 1}
    assert lent and any(r.decode_replica in lent for r in res.records)


def test_backlog_without_a_better_split_switches_nothing() -> None:
    """Prompts queue far past the TTFT budget, but with one PREFILL and two DECODERs moving a
    decoder would make decoding the bottleneck: the capacity guard keeps the plan's roles."""
    cost = cost_model(["a", "b", "c"], LinearTimes(decode_s_per_seq=0.002))
    p = plan(
        replica(0, Role.PREFILL, [("a", 0, 4)]),
        replica(1, Role.DECODER, [("b", 0, 4)], concurrency=4),
        replica(2, Role.DECODER, [("c", 0, 4)], concurrency=4),
    )
    reqs = _phased(300, 0.6, 7, [((100, 300), (30, 90))])
    settings = PolicySettings(adapt=True, ttft_budget_s=1.0, min_dwell_s=5.0)
    fixed = simulate(p, cost, reqs, ServingContext(PolicySettings(ttft_budget_s=1.0)))
    adaptive = simulate(p, cost, reqs, ServingContext(settings))
    assert summarize(fixed.records)["waiting_time_s"]["mean"] > 10 * settings.ttft_budget_s
    assert adaptive.role_switches == 0 and adaptive.records == fixed.records

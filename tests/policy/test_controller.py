"""The role controller's thresholds, hysteresis, dwell and one-in-flight rule (policy/controller.py)."""

from __future__ import annotations

from e2llm.plan.types import Role
from e2llm.policy.controller import Switch, decide_switch, drained, pressure
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.settings import PolicySettings

S = PolicySettings(adapt=True, ttft_budget_s=10.0, min_dwell_s=60.0)


def _p(rid: int, queued: int, rate: float = 100.0) -> ReplicaLoad:
    return ReplicaLoad(
        rid,
        Role.PREFILL,
        queued_prompt_tokens=queued,
        prefill_tok_s=rate,
        concurrency=4,
        kv_capacity_tokens=8000,
        kv_free_tokens=8000,
    )


def _d(rid: int, seqs: int, conc: int = 4) -> ReplicaLoad:
    return ReplicaLoad(
        rid,
        Role.DECODER,
        decode_sequences=seqs,
        concurrency=conc,
        kv_capacity_tokens=8000,
        kv_free_tokens=8000 - 1000 * seqs,
    )


def test_pressures_are_normalised_backlogs() -> None:
    p = pressure([_p(0, 1000), _p(1, 1000), _d(2, 2), _d(3, 6)], ttft_budget_s=5.0)
    assert p.prefill == 2000 / 200 / 5.0
    assert p.decode == max(8 / 8, 8000 / 16000)


def test_short_prefill_takes_the_idlest_decoder() -> None:
    loads = [_p(0, 2000), _d(1, 1), _d(2, 0)]  # 20 s of prompts vs a 10 s budget, decoders idle
    assert decide_switch(loads, S, 100.0, {}, False) == Switch(2, Role.PREFILL)


def test_short_decode_takes_a_prefill_replica() -> None:
    loads = [_p(0, 0), _p(1, 10), _d(2, 5), _d(3, 4)]
    assert decide_switch(loads, S, 100.0, {}, False) == Switch(0, Role.DECODER)


def test_hysteresis_no_switch_between_thresholds() -> None:
    # prefill pressure 1.5 but decoders half busy (0.625 > decode_low): no switch either way
    loads = [_p(0, 1500), _d(1, 3), _d(2, 2)]
    assert decide_switch(loads, S, 100.0, {}, False) is None
    # decoders full but prompts queue (prefill 0.5 > prefill_low): no switch
    loads = [_p(0, 500), _p(1, 500), _d(2, 8), _d(3, 8)]
    assert decide_switch(loads, S, 100.0, {}, False) is None


def test_one_in_flight_dwell_and_last_of_a_pool() -> None:
    loads = [_p(0, 2000), _d(1, 1), _d(2, 0)]
    assert decide_switch(loads, S, 100.0, {}, True) is None
    assert decide_switch(loads, S, 100.0, {2: 50.0}, False) == Switch(1, Role.PREFILL)  # 2 dwelt 50 s
    assert decide_switch(loads, S, 100.0, {1: 50.0, 2: 50.0}, False) is None
    assert decide_switch([_p(0, 2000), _d(1, 0)], S, 100.0, {}, False) is None  # the last decoder stays


def test_drained() -> None:
    assert drained(_p(0, 0)) and not drained(_p(0, 1))
    assert not drained(ReplicaLoad(0, Role.PREFILL, transfer_backlog_s=0.5))
    assert drained(_d(1, 0)) and not drained(_d(1, 1))

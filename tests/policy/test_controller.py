"""The role controller's triggers, capacity guard (hysteresis), dwell and one-in-flight rule."""

from __future__ import annotations

from e2llm.plan.types import Role
from e2llm.policy.controller import Demand, Switch, decide_switch, drained, pressure, sustained_rps
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.settings import PolicySettings

S = PolicySettings(adapt=True, ttft_budget_s=10.0, min_dwell_s=60.0, min_gain=0.1)
PROMPTS = Demand(mean_input_tokens=1000, mean_output_tokens=10)  # prompt-heavy
OUTPUTS = Demand(mean_input_tokens=10, mean_output_tokens=1000)  # decode-heavy


def _p(rid: int, queued: int, rate: float = 100.0, decode: float = 100.0) -> ReplicaLoad:
    return ReplicaLoad(
        rid,
        Role.PREFILL,
        queued_prompt_tokens=queued,
        prefill_tok_s=rate,
        concurrency=4,
        kv_capacity_tokens=8000,
        kv_free_tokens=8000,
        decode_tok_s=decode,
    )


def _d(rid: int, seqs: int, conc: int = 4, rate: float = 100.0, decode: float = 100.0) -> ReplicaLoad:
    return ReplicaLoad(
        rid,
        Role.DECODER,
        decode_sequences=seqs,
        concurrency=conc,
        prefill_tok_s=rate,
        kv_capacity_tokens=8000,
        kv_free_tokens=8000 - 1000 * seqs,
        decode_tok_s=decode,
    )


def test_pressures_are_normalised_backlogs() -> None:
    p = pressure([_p(0, 1000), _p(1, 1000), _d(2, 2), _d(3, 6)], ttft_budget_s=5.0)
    assert p.prefill == 2000 / 200 / 5.0
    assert p.decode == max(8 / 8, 8000 / 16000)


def test_sustained_rate_is_the_slower_pool() -> None:
    loads = [_p(0, 0, rate=300.0), _d(1, 0, decode=50.0), _d(2, 0, decode=50.0)]
    assert sustained_rps(loads, Demand(100, 10)) == min(300 / 100, 100 / 10)
    assert sustained_rps(loads, Demand(100, 10), moved=loads[1]) == min((300 + 100) / 100, 50 / 10)


def test_short_prefill_takes_the_idlest_decoder_when_it_helps() -> None:
    loads = [_p(0, 2000), _d(1, 1), _d(2, 0)]  # 20 s of prompts vs a 10 s budget
    assert decide_switch(loads, S, PROMPTS, 100.0, {}, False) == Switch(2, Role.PREFILL)
    # the same backlog, but decoding is the slower pool for this demand: moving a decoder loses
    assert decide_switch(loads, S, OUTPUTS, 100.0, {}, False) is None


def test_short_decode_takes_a_prefill_replica_when_it_helps() -> None:
    loads = [_p(0, 0), _p(1, 10), _d(2, 5), _d(3, 4)]
    assert decide_switch(loads, S, OUTPUTS, 100.0, {}, False) == Switch(0, Role.DECODER)
    assert decide_switch(loads, S, PROMPTS, 100.0, {}, False) is None


def test_no_backlog_no_switch_and_the_gain_must_pass_the_margin() -> None:
    assert decide_switch([_p(0, 500), _d(1, 2), _d(2, 0)], S, PROMPTS, 100.0, {}, False) is None
    # balanced pools: moving a decoder gains 5% < min_gain 10%
    loads = [_p(0, 2000, rate=100.0), _d(1, 1, rate=5.0, decode=2.0), _d(2, 0, rate=5.0, decode=2.0)]
    demand = Demand(100, 1)  # prefill 1 req/s, decode 4 req/s; moving one: min(1.05, 2) vs 1
    assert decide_switch(loads, S, demand, 100.0, {}, False) is None
    assert decide_switch(loads, PolicySettings(min_gain=0.04), demand, 100.0, {}, False) == Switch(
        2, Role.PREFILL
    )


def test_hysteresis_the_reverse_switch_does_not_follow() -> None:
    loads = [_p(0, 2000), _d(1, 1), _d(2, 0)]
    assert decide_switch(loads, S, PROMPTS, 100.0, {}, False) == Switch(2, Role.PREFILL)
    after = [_p(0, 0), _p(2, 0), _d(1, 9)]  # decoding now backlogged, for the same demand
    assert decide_switch(after, S, PROMPTS, 200.0, {2: 100.0}, False) is None


def test_one_in_flight_dwell_and_last_of_a_pool() -> None:
    loads = [_p(0, 2000), _d(1, 1), _d(2, 0)]
    assert decide_switch(loads, S, PROMPTS, 100.0, {}, True) is None
    assert decide_switch(loads, S, PROMPTS, 100.0, {2: 50.0}, False) == Switch(
        1, Role.PREFILL
    )  # 2 dwelt 50 s
    assert decide_switch(loads, S, PROMPTS, 100.0, {1: 50.0, 2: 50.0}, False) is None
    assert (
        decide_switch([_p(0, 2000), _d(1, 0)], S, PROMPTS, 100.0, {}, False) is None
    )  # the last decoder stays
    cannot_decode = [_p(0, 0), ReplicaLoad(1, Role.PREFILL, prefill_tok_s=100.0), _d(2, 9)]
    assert decide_switch(cannot_decode, S, OUTPUTS, 100.0, {}, False) == Switch(0, Role.DECODER)


def test_drained() -> None:
    assert drained(_p(0, 0)) and not drained(_p(0, 1))
    assert not drained(ReplicaLoad(0, Role.PREFILL, transfer_backlog_s=0.5))
    assert drained(_d(1, 0)) and not drained(_d(1, 1))

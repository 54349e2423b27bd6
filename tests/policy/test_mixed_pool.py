"""Splitwise's mixed-pool rules (policy/mixed_pool.py, after SplitwiseSim's MixedPoolScheduler)."""

from __future__ import annotations

from e2llm.plan.types import Role
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.mixed_pool import (
    PROMPT_QUEUE_TOKENS,
    Route,
    least_memory,
    returns,
    route_prompt,
    route_token,
)


def _prompt(rid: int, queued: int, waiting: int = 1, **kw) -> ReplicaLoad:
    return ReplicaLoad(
        rid,
        Role.PREFILL,
        queued_prompt_tokens=queued,
        prompts_waiting=waiting,
        concurrency=8,
        kv_capacity_tokens=100_000,
        kv_free_tokens=100_000,
        **kw,
    )


def _token(rid: int, seqs: int, free: int, **kw) -> ReplicaLoad:
    kw.setdefault("kv_used_share", 1 - free / 40_000)
    return ReplicaLoad(
        rid,
        Role.DECODER,
        decode_sequences=seqs,
        concurrency=16,
        kv_free_tokens=free,
        kv_capacity_tokens=40_000,
        **kw,
    )


def test_prompt_to_fewest_pending_tokens() -> None:
    assert route_prompt([_prompt(0, 5000), _prompt(1, 3000), _token(2, 0, 40_000)], 1000) == Route(1)


def test_long_queue_borrows_the_token_machine_with_fewest_pending() -> None:
    loads = [_prompt(0, 8000), _token(1, 3, 20_000), _token(2, 1, 30_000)]
    assert PROMPT_QUEUE_TOKENS == 8192
    assert route_prompt(loads, 1000) == Route(2, borrow=True)
    # exactly at the limit is not long; nothing waiting is never long
    assert route_prompt(loads, 192) == Route(0)
    assert route_prompt([_prompt(0, 9000, waiting=0), *loads[1:]], 1000) == Route(0)


def test_mixed_pool_is_tried_before_borrowing_again() -> None:
    borrowed = ReplicaLoad(
        3,
        Role.COLOCATED,
        home_role=Role.DECODER,
        queued_prompt_tokens=500,
        concurrency=16,
        kv_capacity_tokens=40_000,
        kv_free_tokens=40_000,
    )
    loads = [_prompt(0, 8000), _token(1, 3, 20_000), borrowed]
    assert route_prompt(loads, 1000) == Route(3)


def test_token_to_least_memory_in_use_then_mixed_then_borrow_a_prompt_machine() -> None:
    loads = [_prompt(0, 0), _prompt(1, 0), _token(2, 3, 10_000), _token(3, 1, 30_000)]
    assert route_token(loads, 2000) == Route(3)
    full = [_prompt(0, 0), _prompt(1, 0), _token(2, 3, 100), _token(3, 1, 150)]
    assert route_token(full, 2000) == Route(0, borrow=True)
    assert route_token(full[2:], 2000) is None
    assert least_memory(full[2:], 2000).id == 3  # type: ignore[union-attr]


def test_borrowed_returns_when_idle() -> None:
    b = ReplicaLoad(0, Role.COLOCATED, home_role=Role.PREFILL, concurrency=4)
    assert returns(b)
    assert not returns(ReplicaLoad(0, Role.COLOCATED, home_role=Role.PREFILL, decode_sequences=1))
    assert not returns(ReplicaLoad(0, Role.DECODER))

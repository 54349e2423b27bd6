"""e2llm's routing rules on hand-made loads (policy/routing.py)."""

from __future__ import annotations

from e2llm.plan.types import Role
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.routing import admits, pick_decoder, pick_prefill


def _prefill(rid: int, queued: int, rate: float = 1000.0, **kw) -> ReplicaLoad:
    return ReplicaLoad(
        rid, Role.PREFILL, queued_prompt_tokens=queued, prefill_tok_s=rate, kv_capacity_tokens=10_000, **kw
    )


def _decoder(rid: int, seqs: int, conc: int = 4, free: int = 5000, **kw) -> ReplicaLoad:
    return ReplicaLoad(
        rid,
        Role.DECODER,
        decode_sequences=seqs,
        concurrency=conc,
        kv_free_tokens=free,
        kv_capacity_tokens=10_000,
        **kw,
    )


def test_kv_ready_is_a_tandem_of_prefill_queue_and_links() -> None:
    r = _prefill(0, 2000, rate=500.0, latency_s=0.5, transfer_backlog_s=1.5, handoff_s=0.25)
    assert r.kv_ready_s() == 2000 / 500 + 0.5 + 0.25  # the links clear while the queue drains
    r = _prefill(0, 2000, rate=500.0, latency_s=0.5, transfer_backlog_s=9.0, handoff_s=0.25)
    assert r.kv_ready_s() == 9.0 + 0.25  # the links are the longer queue


def test_prefill_picks_smallest_normalised_backlog() -> None:
    # 3000 tokens at 1000 tok/s (3 s) beats 1000 tokens at 200 tok/s (5 s)
    loads = [_prefill(0, 1000, rate=200.0), _prefill(1, 3000)]
    assert pick_prefill(loads, 100, 200).id == 1  # type: ignore[union-attr]


def test_transfer_backlog_steers_prompts_away_from_a_slow_link() -> None:
    loads = [_prefill(0, 0, transfer_backlog_s=30.0), _prefill(1, 5000)]
    assert pick_prefill(loads, 100, 200).id == 1  # type: ignore[union-attr]
    # idle links: the better connected of two equally busy replicas
    loads = [_prefill(0, 1000, handoff_s=0.9), _prefill(1, 1000, handoff_s=0.1)]
    assert pick_prefill(loads, 100, 200).id == 1  # type: ignore[union-attr]


def test_prefill_skips_draining_decoders_and_too_small_replicas() -> None:
    loads = [
        _prefill(0, 0, accepting=False),
        ReplicaLoad(1, Role.PREFILL, prefill_tok_s=1000.0, kv_capacity_tokens=50),
        _decoder(2, 0),
        _prefill(3, 9000),
    ]
    assert pick_prefill(loads, 100, 200).id == 3  # type: ignore[union-attr]
    assert pick_prefill(loads[:3], 100, 200) is None


def _mixed(rid: int, seqs: int, **kw) -> ReplicaLoad:
    """A MIXED replica with 4 decode slots, `seqs` of them taken (above 4: queued for a slot)."""
    return ReplicaLoad(
        rid,
        Role.MIXED,
        prefill_tok_s=1000.0,
        decode_sequences=seqs,
        concurrency=4,
        kv_free_tokens=9000,
        kv_capacity_tokens=10_000,
        **kw,
    )


def test_mixed_replica_preferred_only_with_a_free_slot_and_kv() -> None:
    full, roomy = _mixed(0, 4), _mixed(1, 1, queued_prompt_tokens=4000)  # no decode rate in the views
    assert pick_prefill([full, roomy], 100, 200).id == 1  # type: ignore[union-attr]
    assert pick_prefill([full], 100, 200).id == 0  # type: ignore[union-attr]  # still the only one


def test_a_full_mixed_replica_competes_by_its_wait_for_a_slot() -> None:
    """All 4 slots taken, 1 more queued, a batch of 100 tok/s and 1000-token answers: the prompt's
    slot frees in 2 x 1000 / 100 = 20 s. A PREFILL replica 30 s behind loses; one 10 s behind wins."""
    full = _mixed(0, 5, decode_tok_s=100.0)
    prompt, context = 100, 1100
    assert pick_prefill([_prefill(1, 30_000), full], prompt, context).id == 0  # type: ignore[union-attr]
    assert pick_prefill([_prefill(1, 10_000), full], prompt, context).id == 1  # type: ignore[union-attr]


def test_decoder_least_load_among_those_with_free_kv() -> None:
    loads = [_decoder(0, 0, free=100), _decoder(1, 3), _decoder(2, 2)]
    assert pick_decoder(loads, 500).id == 2  # type: ignore[union-attr]
    # nobody has room now: queue at the least loaded that could ever hold it
    loads = [_decoder(0, 3, free=0), _decoder(1, 1, free=0)]
    assert pick_decoder(loads, 500).id == 1  # type: ignore[union-attr]
    assert pick_decoder(loads, 20_000) is None


def test_decoder_ties_go_to_the_faster_batch_then_the_first() -> None:
    loads = [
        _decoder(0, 1, decode_tok_s=50.0),
        _decoder(1, 1, decode_tok_s=80.0),
        _decoder(2, 1, decode_tok_s=80.0),
    ]
    assert pick_decoder(loads, 500).id == 1  # type: ignore[union-attr]


def test_draining_decoder_only_when_nothing_else_can_hold_it() -> None:
    small = ReplicaLoad(0, Role.DECODER, concurrency=4, kv_free_tokens=1000, kv_capacity_tokens=1000)
    big = _decoder(1, 0, accepting=False)
    assert pick_decoder([small, big], 500).id == 0  # type: ignore[union-attr]
    assert pick_decoder([small, big], 5000).id == 1  # type: ignore[union-attr]


def test_admits_needs_a_slot_and_the_kv() -> None:
    assert admits(3, 4, 1000, 1000)
    assert not admits(4, 4, 1000, 10)
    assert not admits(0, 4, 999, 1000)

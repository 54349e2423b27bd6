"""Records -> DESIGN metrics: definitions, stats and the JSON shape."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from e2llm.sim.metrics import DISTRIBUTIONS, STAT_KEYS, RequestRecord, max_concurrent, stats, summarize


def _disagg(i: int, arrival: float) -> RequestRecord:
    return RequestRecord(
        id=i,
        arrival_s=arrival,
        input_tokens=100,
        output_tokens=11,
        prefill_start_s=arrival + 1.0,
        prefill_end_s=arrival + 1.5,
        kv_start_s=arrival + 1.5,
        kv_end_s=arrival + 1.7,
        decode_admit_s=arrival + 2.0,
        first_token_s=arrival + 1.7,
        last_token_s=arrival + 2.7,
    )


def test_definitions_disaggregated() -> None:
    r = _disagg(0, 10.0)
    assert r.waiting_s == pytest.approx(1.0 + 0.3)
    assert r.ttft_s == pytest.approx(1.7)
    assert r.tbt_s == pytest.approx(1.0 / 10)
    assert r.e2e_s == pytest.approx(2.7)
    assert r.prefill_tok_s == pytest.approx(200.0)
    assert r.decode_tok_s == pytest.approx(10 / 0.7)


def test_definitions_client_side_only() -> None:
    r = RequestRecord(
        id=0, arrival_s=0.0, input_tokens=5, output_tokens=3, first_token_s=0.4, last_token_s=1.4
    )
    assert r.completed and r.waiting_s is None and r.prefill_tok_s is None
    assert r.ttft_s == 0.4 and r.tbt_s == pytest.approx(0.5)


def test_stats_match_numpy_percentiles() -> None:
    s = stats([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["mean"] == 4.0 and s["p50"] == 3.0
    assert s["p90"] == pytest.approx(7.6) and s["std"] == pytest.approx(3.162277, rel=1e-6)
    assert stats([]) == dict.fromkeys(STAT_KEYS)


def test_max_concurrent_touching_intervals_do_not_overlap() -> None:
    assert max_concurrent([(0, 2), (2, 4), (1, 3)]) == 2


def test_summary_schema_and_failed() -> None:
    recs = [_disagg(0, 0.0), _disagg(1, 0.5), RequestRecord(2, 0.5, 10, 10, failed="too big")]
    m = summarize(recs)
    assert (m["requests"], m["completed"], m["failed"]) == (3, 2, 1)
    assert m["duration_s"] == pytest.approx(3.2)
    for key in DISTRIBUTIONS:
        assert set(m[key]) == set(STAT_KEYS)
    assert m["throughput_tok_s"] == pytest.approx(22 / 3.2)
    assert m["max_concurrent_decode"] == 2
    json.dumps(m)  # plain JSON


def test_second_token_kv_transfer_and_floor() -> None:
    r = replace(_disagg(0, 0.0), second_token_at_s=2.1)
    assert r.second_token_gap_s == pytest.approx(2.1 - 1.7)
    assert r.kv_transfer_s == pytest.approx(0.2)
    assert r.meets_floor(14.0) and not r.meets_floor(15.0)  # 10 tokens in 0.7 s: 14.3 tok/s
    one = RequestRecord(9, 0.0, 10, 1, prefill_start_s=0.0, first_token_s=1.0, last_token_s=1.0)
    assert one.meets_floor(1e9)  # no decode phase
    client = RequestRecord(8, 0.0, 10, 11, first_token_s=1.0, last_token_s=2.0)
    assert client.meets_floor(10.0) and not client.meets_floor(10.5)  # 1 / TBT = 10 tok/s


def test_summary_floor_attainment_goodput_and_switches() -> None:
    recs = [
        replace(_disagg(0, 0.0), second_token_at_s=2.1),
        _disagg(1, 0.5),
        RequestRecord(2, 0.5, 10, 10, failed="x"),
    ]
    slow = replace(recs[1], last_token_s=0.5 + 2.0 + 1.0)  # 10 tokens in 1 s after admission: 10 tok/s
    m = summarize([recs[0], slow, recs[2]], min_decode_tok_s=12.0, role_switches=3)
    assert m["floor_attainment"] == 0.5
    assert m["goodput_rps"] == pytest.approx(1 / m["duration_s"])
    assert m["role_switches"] == 3
    assert m["second_token_s"]["mean"] == pytest.approx(0.4)  # only the record that has one
    assert m["kv_transfer_s"]["p99"] == pytest.approx(0.2)
    assert summarize(recs)["floor_attainment"] == 1.0  # no floor: every completed request meets it
    assert summarize([])["floor_attainment"] is None

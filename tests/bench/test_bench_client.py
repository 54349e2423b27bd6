"""The load generator against a scripted server: client-side timing, open loop, failures, bounds."""

from __future__ import annotations

import asyncio
import time

import pytest
from benchkit import Script, scripted_server

from e2llm.bench.load import BenchSettings, prompt_ids, run_load, served_models
from e2llm.bench.local_server import free_port
from e2llm.bench.server_metrics import histogram_totals, mean_deltas, metric_sum
from e2llm.errors import InputError
from e2llm.specs.workload import Request


def _run(url: str, requests: list[Request], **kw: float) -> list:
    settings = BenchSettings(base_url=url, model="fake-model", **kw)  # type: ignore[arg-type]
    return asyncio.run(run_load(requests, settings))


def test_times_come_from_the_stream_and_the_queue_header() -> None:
    reqs = [Request(0, 0.0, 40, 6)]
    with scripted_server(Script(first_delay_s=0.2, gap_s=0.03, queue_s=0.125)) as (url, seen):
        [rec] = _run(url, reqs)
    assert rec.completed and rec.output_tokens == 6
    # lower bounds are the server's scripted delays; upper ones leave room for a busy machine
    assert 0.2 <= rec.ttft_s < 1.0
    assert 0.025 <= rec.tbt_s < 0.2
    assert rec.e2e_s == pytest.approx(rec.ttft_s + 5 * rec.tbt_s)
    assert rec.waiting_s == pytest.approx(0.125)
    assert rec.first_token_s < rec.second_token_at_s < rec.last_token_s  # type: ignore[operator]
    body = seen[0]
    assert body["prompt"] == prompt_ids(reqs[0]) and len(body["prompt"]) == 40
    assert body["max_tokens"] == 6 and body["stream"] is True and body["ignore_eos"] is True


def test_a_token_without_text_yet_is_timed_when_it_arrives() -> None:
    """The first tokens of a multi-byte character carry no text: the first token is still the
    first chunk, not the first one with text (that would inflate TTFT and shrink TBT)."""
    with scripted_server(Script(first_delay_s=0.1, gap_s=0.3, empty_first=2)) as (url, _):
        [rec] = _run(url, [Request(0, 0.0, 8, 4)])
    assert rec.completed and rec.output_tokens == 4
    assert rec.ttft_s < 0.35  # not 0.1 + 2 x 0.3
    assert rec.e2e_s - rec.ttft_s > 2.5 * 0.3  # three gaps after the first token, not one


def test_requests_are_sent_open_loop_at_their_arrival_times() -> None:
    reqs = [Request(0, 0.0, 8, 2), Request(1, 0.3, 8, 2)]
    with scripted_server(Script(first_delay_s=0.6, queue_s=None)) as (url, _):
        recs = _run(url, reqs)
    # The second request went out while the first was still waiting for its first token.
    assert recs[1].arrival_s - recs[0].arrival_s == pytest.approx(0.3, abs=0.1)
    assert recs[1].arrival_s < recs[0].first_token_s
    assert all(r.completed and r.waiting_s is None for r in recs)


def test_server_errors_are_counted_as_failed() -> None:
    with scripted_server(Script(status=500)) as (url, _):
        recs = _run(url, [Request(i, 0.01 * i, 8, 4) for i in range(3)])
    assert [r.completed for r in recs] == [False] * 3
    assert all(r.failed and r.failed.startswith("HTTP 500") for r in recs)


def test_a_stalled_stream_times_out_instead_of_hanging() -> None:
    with scripted_server(Script(stall_s=5.0)) as (url, _):
        t0 = time.perf_counter()
        [rec] = _run(url, [Request(0, 0.0, 8, 4)], request_timeout_s=0.3)
        elapsed = time.perf_counter() - t0
    assert rec.failed is not None and rec.failed.startswith("timeout")
    assert elapsed < 4.5  # waiting out the stall would take 5 s; only the run is timed, not the server start


def test_max_seconds_cuts_the_run_and_counts_unfinished_requests() -> None:
    reqs = [Request(0, 0.0, 8, 20), Request(1, 5.0, 8, 2)]
    with scripted_server(Script(gap_s=0.1)) as (url, _):
        t0 = time.perf_counter()
        recs = _run(url, reqs, max_seconds=0.5)
        elapsed = time.perf_counter() - t0
    assert elapsed < 4.5  # uncut, the run lasts >= 5 s (the second request is due then)
    assert len(recs) == 1  # the request due at 5 s was never sent
    assert recs[0].failed is not None and "max-seconds" in recs[0].failed


def test_max_requests_bounds_the_count() -> None:
    with scripted_server(Script()) as (url, seen):
        recs = _run(url, [Request(i, 0.0, 4, 2) for i in range(5)], max_requests=2)
    assert len(recs) == 2 and len(seen) == 2


def test_unreachable_server_is_bad_input() -> None:
    with pytest.raises(InputError, match="cannot reach the server"):
        served_models(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)


def test_model_list_comes_from_the_server() -> None:
    with scripted_server(Script()) as (url, _):
        assert served_models(url) == ["fake-model"]


def test_server_histograms_give_the_run_mean() -> None:
    before = {"w": (1.0, 4.0), "t": (2.0, 2.0)}
    after = {"w": (4.0, 10.0), "t": (2.0, 2.0), "new": (1.0, 1.0)}
    assert mean_deltas(before, after) == {"w": pytest.approx(0.5)}


def test_no_metrics_endpoint_means_no_server_figures() -> None:
    assert histogram_totals(f"http://127.0.0.1:{free_port()}") == {}


def test_metric_sum_adds_label_sets_and_filters() -> None:
    text = (
        '# HELP x\ne2llm_stage_compute_seconds_total{replica="0",device="a",phase="decode"} 1.5\n'
        'e2llm_stage_compute_seconds_total{replica="1",device="b",phase="decode"} 2.0\n'
        'e2llm_stage_compute_seconds_total{replica="0",device="a",phase="prefill"} 9.0\n'
        "e2llm_step_sum 3.0\ne2llm_step_sum_other 7.0\nbroken nan-ish\n"
    )
    assert metric_sum(text, "e2llm_stage_compute_seconds_total", phase="decode") == pytest.approx(3.5)
    assert metric_sum(text, "e2llm_stage_compute_seconds_total") == pytest.approx(12.5)
    assert metric_sum(text, "e2llm_step_sum") == pytest.approx(3.0)
    assert metric_sum(text, "absent") is None

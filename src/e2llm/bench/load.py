"""Open-loop load: send the workload's requests at their arrival times, whatever the server does.

Open loop (a request is sent at its arrival time even when earlier ones are still running) is
what the simulator models and what exposes queueing; a closed loop would hide it. The run is
bounded twice: by `max_requests` and by `max_seconds` of wall time, after which requests still
running are cancelled and counted as failed, so a stalled server can never hang the benchmark.

Client-side times become `RequestRecord`s (sim/metrics.py) so `bench` prints the same metrics
JSON as `simulate`. The server's waiting time, when it reports one, is the only server-side
figure: it is stored as `prefill_start_s = arrival + waiting`, which is what the metrics'
waiting time reads (the bench cannot see the split between prefill and decode queues).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from e2llm.bench.client import Outcome, completion_payload, stream_completion
from e2llm.errors import InputError
from e2llm.progress import Progress
from e2llm.sim.metrics import RequestRecord
from e2llm.specs.workload import Request

log = logging.getLogger(__name__)

# Prompt token ids are drawn from this range: ordinary vocabulary entries in every real LLM
# (the first ids hold special tokens), never EOS. Attention and MLP cost do not depend on which
# tokens they are.
PROMPT_ID_LOW = 1000
PROMPT_ID_SPAN = 1000


@dataclass(frozen=True, slots=True)
class BenchSettings:
    base_url: str  # e.g. http://127.0.0.1:8000 (no /v1)
    model: str
    api_key: str | None = None
    max_requests: int | None = None
    max_seconds: float = 600.0
    request_timeout_s: float = 120.0  # longest silence tolerated inside one response
    connect_timeout_s: float = 5.0


def prompt_ids(request: Request) -> list[int]:
    """`request.input_tokens` token ids, deterministic per request id."""
    return [
        PROMPT_ID_LOW + (request.id * 7919 + i * 104729) % PROMPT_ID_SPAN for i in range(request.input_tokens)
    ]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def served_models(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> list[str]:
    """Model ids the server lists at `/v1/models`; an unreachable or non-OpenAI URL is bad input."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        resp = httpx.get(url, headers=_headers(api_key), timeout=timeout_s)
    except httpx.HTTPError as err:
        raise InputError("URL", f"cannot reach the server ({type(err).__name__})", base_url) from err
    if resp.status_code in (401, 403):
        raise InputError("api_key", f"the server refused the key (HTTP {resp.status_code})", url)
    try:
        resp.raise_for_status()
        return [str(m["id"]) for m in resp.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
        raise InputError("URL", f"GET /v1/models did not answer an OpenAI model list ({err})", url) from err


def _record(request: Request, outcome: Outcome, t0: float) -> RequestRecord:
    """A metrics record with times in seconds since `t0`, the start of the run."""
    arrival = outcome.sent_s - t0
    if outcome.error is not None:
        return RequestRecord(
            request.id, arrival, request.input_tokens, request.output_tokens, failed=outcome.error
        )
    assert outcome.first_token_s is not None and outcome.last_token_s is not None
    return RequestRecord(
        request.id,
        arrival,
        request.input_tokens,
        outcome.tokens,
        prefill_start_s=None if outcome.queue_s is None else arrival + outcome.queue_s,
        first_token_s=outcome.first_token_s - t0,
        second_token_at_s=None if outcome.second_token_s is None else outcome.second_token_s - t0,
        last_token_s=outcome.last_token_s - t0,
    )


async def run_load(
    requests: Sequence[Request],
    settings: BenchSettings,
    progress: Progress | None = None,
) -> list[RequestRecord]:
    """Send `requests` (sorted by arrival) open-loop; return one record per request sent.
    `progress` counts finished requests (the note: how many failed).

    Requests whose arrival falls after `max_seconds` are not sent and not counted.
    """
    todo = sorted(requests, key=lambda r: (r.arrival_s, r.id))[: settings.max_requests]
    url = settings.base_url.rstrip("/") + "/v1/completions"
    timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    records: dict[int, RequestRecord] = {}
    failures = 0

    def finished(record: RequestRecord) -> None:
        nonlocal failures
        records[record.id] = record
        failures += record.failed is not None
        if progress:
            progress(len(records), len(todo), f"{failures} failed" if failures else "")

    async with httpx.AsyncClient(
        timeout=timeout, limits=limits, headers=_headers(settings.api_key)
    ) as client:
        t0 = time.perf_counter()
        deadline = t0 + settings.max_seconds
        first_arrival = todo[0].arrival_s if todo else 0.0

        async def one(req: Request) -> None:
            payload = completion_payload(settings.model, prompt_ids(req), req.output_tokens)
            outcome = await stream_completion(client, url, payload)
            if outcome.error is not None:
                log.warning(
                    "request %d failed after %.1f s: %s",
                    req.id,
                    time.perf_counter() - outcome.sent_s,
                    outcome.error,
                )
            finished(_record(req, outcome, t0))

        tasks: dict[int, asyncio.Task[None]] = {}
        for req in todo:
            at = t0 + req.arrival_s - first_arrival
            if at > deadline:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks[req.id] = asyncio.create_task(one(req))
        pending = [t for t in tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.perf_counter()))
        for req in todo:
            task = tasks.get(req.id)
            if task is not None and not task.done():
                task.cancel()
                why = f"not finished within --max-seconds {settings.max_seconds:g}"
                arrival = req.arrival_s - first_arrival
                finished(RequestRecord(req.id, arrival, req.input_tokens, req.output_tokens, failed=why))
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return [records[r.id] for r in todo if r.id in records]

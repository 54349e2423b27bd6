"""One streamed completion request, timed from the client side.

The request goes to the OpenAI-compatible `/v1/completions` with `stream: true`. The prompt is a
list of token ids (the OpenAI API accepts that form), so the server sees exactly the input length
the workload asks for, whatever its tokenizer; `ignore_eos` asks the server to generate exactly
`max_tokens` tokens, as vLLM and our runtime do, since a small model otherwise stops after a few.

Each SSE event with a choice that is not the final one (no finish reason) or that carries text
is one token: `e2llm serve` sends one chunk per generated token, with empty text while a token
completes no character yet. The server's own waiting
time (queued, not served) comes from the `x-e2llm-queue-s` response header or, when the server
can only know it after the headers are sent, from an `e2llm` object in the final event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

QUEUE_HEADER = "x-e2llm-queue-s"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the client saw; times are `time.perf_counter()` seconds. `error` set means failed."""

    sent_s: float
    first_token_s: float | None
    last_token_s: float | None
    tokens: int
    queue_s: float | None
    error: str | None = None
    second_token_s: float | None = None  # the second text event (None: fewer than two)


def completion_payload(model: str, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
    """The JSON body of one streamed completion of exactly `max_tokens` tokens (greedy)."""
    return {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


async def stream_completion(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> Outcome:
    """POST `payload` to `url` and read the SSE stream to its end. Never raises for HTTP or
    network failures: they come back as an `Outcome` with `error` set (timeouts are the
    client's: a stalled server fails the request, it does not hang the run)."""
    sent = time.perf_counter()
    first = second = last = None
    tokens = 0
    queue_s: float | None = None
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")[:200].replace("\n", " ")
                return Outcome(sent, None, None, 0, None, f"HTTP {resp.status_code}: {body}")
            queue_s = _float(resp.headers.get(QUEUE_HEADER))
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return Outcome(sent, first, last, tokens, queue_s, f"server error: {event['error']}")
                now = time.perf_counter()
                choices = event.get("choices") or []
                if any(c.get("text") or c.get("finish_reason") is None for c in choices):
                    tokens += 1
                    if first is None:
                        first = now
                    elif second is None:
                        second = now
                    last = now
                usage = event.get("usage") or {}
                if usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                extra = event.get("e2llm") or {}
                if extra.get("queue_s") is not None:
                    queue_s = _float(extra["queue_s"])
    except httpx.TimeoutException as err:
        return Outcome(sent, first, last, tokens, queue_s, f"timeout: {type(err).__name__}")
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        return Outcome(sent, first, last, tokens, queue_s, f"{type(err).__name__}: {err}")
    if first is None:
        return Outcome(sent, None, None, 0, queue_s, "no token received")
    # Text events can merge tokens (held-back stop-string text, multi-byte characters):
    # the server's usage count is the truth when it sends one.
    n = usage_tokens if usage_tokens is not None else tokens
    return Outcome(sent, first, last, n, queue_s, second_token_s=second)

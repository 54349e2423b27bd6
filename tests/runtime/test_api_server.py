"""A live `e2llm serve PLAN.json` (subprocess, real Ray, real SmolLM2) driven over HTTP.

The official `openai` client, streaming and not; `/v1/models`, `/health`, `/metrics`; the API key;
every bad-input case (each answered with an OpenAI error body while the server stays up); and a
client that disconnects mid-stream, whose KV must be freed on every stage. The plan hands the KV
from a 1-stage PREFILL replica to a 2-stage DECODER replica. One server (`conftest.api_server`)
serves this module and `test_api_openai.py`.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from servekit import API_KEY as KEY
from servekit import API_MODEL as MODEL

from e2llm.bench.local_server import LocalServer

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(api_server: LocalServer) -> str:
    return api_server.url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def _post(server: str, path: str, body: object, raw: bytes | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{server}{path}", content=content, headers=headers, timeout=120)


def _healthy_and_idle(server: str, within_s: float = 15.0) -> dict:
    """Poll /health until no stage holds a sequence; return the last body."""
    deadline = time.monotonic() + within_s
    while True:
        body = httpx.get(f"{server}/health", timeout=10).json()
        if all(s["sequences"] == 0 and s["kv_bytes"] == 0 for s in body["stages"]):
            return body
        if time.monotonic() > deadline:
            return body
        time.sleep(0.3)


def test_chat_non_streaming_greedy_says_paris(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, temperature=0)
    reply = raw.parse()
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert float(raw.headers["x-e2llm-queue-s"]) >= 0


def test_chat_streaming_greedy_says_paris(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert "Paris" in text
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens > 0


def test_completions_length_and_stop(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=5, temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 5
    full = out.choices[0].text
    cut = full.strip()[:2]
    stopped = client.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=5, temperature=0, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert cut not in stopped.choices[0].text
    assert full.startswith(stopped.choices[0].text)


def test_models_health_metrics_and_api_key(server: str, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ok"  # open without a key
    denied = httpx.get(f"{server}/metrics", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    metrics = httpx.get(f"{server}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10).text
    for name in ("e2llm_queue_length", "e2llm_stage_compute_seconds_total", "e2llm_tokens_per_second"):
        assert name in metrics
    moved = [line for line in metrics.splitlines() if line.startswith("e2llm_kv_transfer_bytes_total")]
    assert moved and float(moved[0].split()[-1]) > 0  # PREFILL -> DECODER hand-offs happened


@pytest.mark.parametrize(
    ("body", "raw", "status", "param"),
    [
        (None, b'{"model": "smollm2-135m", "messages": [', 400, None),
        ({"model": "gpt-9", "messages": QUESTION}, None, 404, "model"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 0}, None, 400, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": -3}, None, 400, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi " * 9000}]}, None, 400, "messages"),
        ({"model": MODEL}, None, 400, "messages"),
        ({"model": MODEL, "messages": QUESTION, "temperature": "hot"}, None, 400, "temperature"),
        ([1, 2, 3], None, 400, None),
        (None, b"[" * 5000 + b"]" * 5000, 400, None),
        (None, b'{"model": "smollm2-135m", "max_tokens": ' + b"7" * 5000 + b"}", 400, None),
        (None, b'{"model": "smollm2-135m", "messages": ["' + b"x" * (1 << 20) + b'"]}', 413, None),
    ],
    ids=[
        "malformed-json",
        "unknown-model",
        "max-tokens-0",
        "max-tokens-neg",
        "too-long",
        "no-messages",
        "bad-temperature",
        "not-an-object",
        "deep-json",
        "huge-integer",
        "body-over-1-MiB",
    ],
)
def test_bad_requests_get_openai_errors(
    server: str, body: object, raw: bytes | None, status: int, param: str
) -> None:
    r = _post(server, "/v1/chat/completions", body, raw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_openai_client_sees_errors_as_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model=MODEL, prompt="word " * 9000)


def test_a_stream_has_one_chunk_per_generated_token(server: str) -> None:
    """Token ids whose text is not a whole character yet still get their chunk (empty text)."""
    n = 12
    body = {"model": MODEL, "prompt": list(range(200, 232)), "max_tokens": n, "ignore_eos": True,
            "temperature": 0, "stream": True}  # fmt: skip
    headers = {"authorization": f"Bearer {KEY}"}
    chunks = []
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=headers, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is None]
    assert len(tokens) == n, [c["choices"] for c in chunks]
    done = httpx.post(f"{server}/v1/completions", json={**body, "stream": False}, headers=headers, timeout=60)
    assert (
        "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == done.json()["choices"][0]["text"]
    )


def test_disconnect_mid_stream_frees_kv_everywhere(server: str, client: openai.OpenAI) -> None:
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=headers, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few chunks: the decoder is generating now
    assert any(line.startswith("data: {") for line in got)
    health = _healthy_and_idle(server)
    assert all(s["sequences"] == 0 and s["kv_bytes"] == 0 for s in health["stages"]), health
    metrics = httpx.get(f"{server}/metrics", headers=headers, timeout=10).text
    assert 'e2llm_requests_total{outcome="cancelled"}' in metrics
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)  # still serving
    assert "Paris" in (reply.choices[0].message.content or "")

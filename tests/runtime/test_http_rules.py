"""The API's rules against a real uvicorn server over a fake deployment (no Ray, no model).

- No internal detail reaches a client: an internal error is a generic 500 naming the request id
  (also in `x-request-id`), while the details go to the server log.
- A client that goes away is cancelled, streaming or not.
- Strict types (no `true` for a number, no `"10"` for 10, no `"yes"` for a bool), unsupported
  OpenAI parameters refused with 400 and their `param`, empty prompts refused.
- Browser reachability: POST needs `Content-Type: application/json` (415), and the `Host` header
  must name the server (400 otherwise): no DNS rebinding, no cross-site form posts.
- Tokenising runs off the event loop, in a bounded pool (503 + Retry-After when it is full).
- `GET /v1/models/{id}`, and logprobs in OpenAI's shapes, read by the official `openai` client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from httpkit import MODEL, CharTokenizer, SlowEcho, running, served_model

from e2llm.runtime.cpu_pool import WORKER_NICENESS, CpuPool
from e2llm.runtime.draw import TokenLogprob
from e2llm.runtime.generation import Generation
from e2llm.runtime.http_access import LOOPBACK_HOSTS, allowed_hosts_for, host_allowed
from e2llm.runtime.http_limits import HttpLimits
from e2llm.runtime.server import create_app

KEY = "rules-key"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
SECRET = "/home/op/e2llm/runtime/actors.py line 99, pid 4242, node 10.1.2.3, actor 8f3e"


class Echo(SlowEcho):
    """SlowEcho, plus: a prompt 'raise' makes `submit` raise (a bug in the serving layer), a
    prompt 'fail' fails the generation after two tokens with a message full of internals (what a
    stage error used to carry), and requested logprobs come with each token."""

    def submit(self, gen: Generation) -> None:
        prompt = "".join(map(chr, gen.prompt_ids))
        if prompt == "raise":
            raise RuntimeError(SECRET)
        super().submit(gen)

    async def _run(self, gen: Generation) -> None:
        prompt = "".join(map(chr, gen.prompt_ids))
        i = 0
        while not gen.done:
            await asyncio.sleep(0.01)
            if prompt == "fail" and i == 2:
                gen.fail(SECRET, 500)
                return
            token = ord("a") + i % 26
            logprob = None
            if gen.top_logprobs is not None:
                top = tuple((token + k, -0.5 * (k + 1)) for k in range(gen.top_logprobs))
                logprob = TokenLogprob(-0.5, top)
            gen.add_token(token, logprob)
            i += 1


@pytest.fixture(scope="module")
def deployment() -> Echo:
    return Echo()


@pytest.fixture(scope="module")
def url(deployment: Echo) -> Iterator[str]:
    app = create_app(deployment, served_model(), KEY, HttpLimits(), allowed_hosts=LOOPBACK_HOSTS)  # type: ignore[arg-type]
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)


def _post(url: str, body: Any, path: str = "/v1/completions", **headers: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=json.dumps(body), headers={**AUTH, **headers}, timeout=30)


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _healthy(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def _completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 3, **kw}


# ---- no internal detail in any error body ---------------------------------------------------------
@pytest.mark.parametrize("prompt", ["raise", "fail"])
@pytest.mark.parametrize("stream", [False, True])
def test_internal_errors_are_generic_and_logged_with_the_request_id(
    url: str, caplog: pytest.LogCaptureFixture, prompt: str, stream: bool
) -> None:
    caplog.set_level(logging.ERROR, logger="e2llm")
    r = _post(url, _completion(prompt=prompt, max_tokens=10, stream=stream))
    request_id = r.headers["x-request-id"]
    if r.status_code == 200:  # the stream had started: the error comes as its last event
        assert stream and prompt == "fail"
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        error = events[-1]["error"]
    else:
        error = _error(r, 500)
    assert error["type"] == "server_error" and request_id in error["message"], error
    for leak in ("home", "pid", "10.1.2.3", "actor", "RuntimeError", "Traceback"):
        assert leak not in json.dumps(error), error
    assert SECRET in caplog.text and request_id in caplog.text  # the operator sees what happened
    _healthy(url)


def test_every_response_has_a_request_id(url: str) -> None:
    ids = {httpx.get(f"{url}/health", timeout=5).headers["x-request-id"] for _ in range(3)}
    ids.add(_post(url, _completion()).headers["x-request-id"])
    assert len(ids) == 4


# ---- a client that goes away is cancelled ---------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_is_cancelled(url: str, deployment: Echo, stream: bool) -> None:
    before = len(deployment.gens)
    body = _completion(prompt=f"long {stream}", max_tokens=100_000, ignore_eos=True, stream=stream)
    with httpx.Client(timeout=httpx.Timeout(30, read=0.5)) as c:
        if stream:  # read a few chunks, then hang up
            with c.stream("POST", f"{url}/v1/completions", content=json.dumps(body), headers=AUTH) as r:
                chunks = (line for line in r.iter_lines() if line)
                assert all(next(chunks).startswith("data: ") for _ in range(3))
        else:  # the body would come after 100,000 tokens: the client gives up waiting
            with pytest.raises(httpx.ReadTimeout):
                c.post(f"{url}/v1/completions", content=json.dumps(body), headers=AUTH)
    gen = deployment.gens[before]
    deadline = time.monotonic() + 10
    while not gen.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gen.cancelled and len(gen.generated) < 100_000


# ---- strict types, unsupported parameters, empty prompts ------------------------------------------
@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"max_tokens": True}, "max_tokens"),
        ("/v1/completions", {"max_tokens": "10"}, "max_tokens"),
        ("/v1/completions", {"max_tokens": 10.0}, "max_tokens"),
        ("/v1/completions", {"stream": "yes"}, "stream"),
        ("/v1/completions", {"stream": 1}, "stream"),
        ("/v1/completions", {"temperature": "0.5"}, "temperature"),
        ("/v1/completions", {"temperature": True}, "temperature"),
        ("/v1/completions", {"seed": True}, "seed"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": [True, 3]}, "prompt"),
        ("/v1/completions", {"ignore_eos": "false"}, "ignore_eos"),
        ("/v1/completions", {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ("/v1/chat/completions", {"max_completion_tokens": "7"}, "max_completion_tokens"),
        ("/v1/chat/completions", {"logprobs": "true"}, "logprobs"),
    ],
)
def test_loose_types_are_refused(url: str, path: str, extra: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": MODEL, **extra}
    if path.endswith("chat/completions"):
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    else:
        body.setdefault("prompt", "hi")
    assert _error(_post(url, body, path), 400)["param"] == param
    _healthy(url)


UNSUPPORTED = [
    ("/v1/completions", {"echo": True}, "echo"),
    ("/v1/completions", {"best_of": 2}, "best_of"),
    ("/v1/completions", {"suffix": "}"}, "suffix"),
    ("/v1/completions", {"n": 2}, "n"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"function_call": "auto"}, "function_call"),
    ("/v1/chat/completions", {"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/chat/completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"65": 101}}, "logit_bias.65"),
    ("/v1/chat/completions", {"logit_bias": {"a": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"256": 1}}, "logit_bias"),  # outside the vocabulary
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"top_k": 5}, "top_k"),
    ("/v1/completions", {"repetition_penalty": 1.2}, "repetition_penalty"),
]


@pytest.mark.parametrize(("path", "extra", "param"), UNSUPPORTED, ids=[p for _, _, p in UNSUPPORTED])
def test_unsupported_or_invalid_parameters_get_400_naming_them(
    url: str, path: str, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, **extra}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    error = _error(_post(url, body, path), 400)
    assert error["param"] == param, error
    _healthy(url)


def test_defaults_of_unsupported_parameters_are_accepted(client: openai.OpenAI) -> None:
    """What a client may send that changes nothing: echo off, best_of 1, text output, no tools."""
    out = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, echo=False, best_of=1, n=1)
    assert out.choices[0].text == "ab"
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        response_format={"type": "text"},
        tool_choice="none",
        modalities=["text"],
    )
    assert chat.choices[0].message.content == "ab"


@pytest.mark.parametrize("prompt", ["", [""], []])
def test_an_empty_prompt_is_a_400(url: str, prompt: object) -> None:
    assert _error(_post(url, _completion(prompt=prompt)), 400)["param"] == "prompt"
    _healthy(url)


# ---- browser reachability: content type and Host --------------------------------------------------
@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/completions", "text/plain"),
        ("/v1/completions", None),
        ("/v1/chat/completions", "application/x-www-form-urlencoded"),
        ("/v1/chat/completions", "multipart/form-data; boundary=x"),
        ("/admin/replan", "text/plain"),
        ("/admin/replan", None),
    ],
)
def test_posts_need_a_json_content_type(url: str, path: str, content_type: str | None) -> None:
    headers = {"authorization": AUTH["authorization"]}
    if content_type:
        headers["content-type"] = content_type
    r = httpx.post(f"{url}{path}", content=json.dumps(_completion()), headers=headers, timeout=10)
    assert _error(r, 415)["code"] == "unsupported_media_type"
    ok = _post(url, _completion(), **{"content-type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil", ""]
)
@pytest.mark.parametrize("path", ["/health", "/", "/v1/status", "/v1/models", "/v1/completions"])
def test_a_foreign_host_header_is_refused(url: str, host: str, path: str) -> None:
    """A page on evil.example whose name re-binds to 127.0.0.1 sends `Host: evil.example`."""
    method = "POST" if path == "/v1/completions" else "GET"
    r = httpx.request(
        method, f"{url}{path}", content=json.dumps(_completion()), headers={**AUTH, "host": host}, timeout=10
    )
    assert _error(r, 400)["code"] == "invalid_host"


def test_loopback_names_are_accepted(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert httpx.get(f"{url}/health", headers={"host": host}, timeout=5).status_code == 200, host


def test_allowed_hosts_follow_the_bind_address() -> None:
    assert allowed_hosts_for("127.0.0.1", None) == LOOPBACK_HOSTS
    assert allowed_hosts_for("localhost", None) == LOOPBACK_HOSTS
    assert allowed_hosts_for("192.168.1.7", None) == frozenset({"192.168.1.7"})
    assert allowed_hosts_for("127.0.0.1", ["api.lab", "*"]) is None  # '*': any Host
    assert allowed_hosts_for("0.0.0.0", ["API.lab"]) == frozenset({"api.lab"})
    anywhere = allowed_hosts_for("0.0.0.0", None)
    assert anywhere is not None and anywhere >= LOOPBACK_HOSTS
    # A wildcard bind takes any IP literal (re-binding needs a name) and this machine's names.
    for host in ("10.0.0.5:8000", "[fe80::1]", "localhost"):
        assert host_allowed(host, anywhere), host
    assert not host_allowed("evil.example", anywhere)
    assert not host_allowed("api.lab:8000", allowed_hosts_for("127.0.0.1", None))
    assert host_allowed("api.lab:8000", frozenset({"api.lab"}))


# ---- tokenising off the event loop, bounded ---------------------------------------------------------
class BlockingTokenizer(CharTokenizer):
    """Records the thread each encode runs on, and blocks until `gate` opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.threads: list[tuple[int, bool]] = []

    def encode(self, text: str) -> list[int]:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        self.threads.append((threading.get_ident(), on_loop))
        assert self.gate.wait(30)
        return super().encode(text)


def test_tokenising_runs_off_the_loop_in_a_bounded_pool() -> None:
    tok = BlockingTokenizer()
    limits = HttpLimits(tokenizer_threads=1, tokenizer_queue_chars=6)  # three prompts of 2 characters
    app = create_app(SlowEcho(), served_model(tok), None, limits)  # type: ignore[arg-type]
    with running(app) as base:
        n = 6  # "hi": one tokenising, two queued, three refused
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(_post, base, _completion()) for _ in range(n)]
            deadline = time.monotonic() + 20
            while sum(f.done() for f in futures) < n - 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            _healthy(base)  # the loop answers while the tokenizer is blocked
            tok.gate.set()
            answers = [f.result() for f in futures]
    busy = [r for r in answers if r.status_code == 503]
    assert sorted(r.status_code for r in answers) == [200] * 3 + [503] * 3, [r.text for r in answers]
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "server_busy" for r in busy)
    assert tok.threads and not any(on_loop for _, on_loop in tok.threads)
    assert threading.get_ident() not in {ident for ident, _ in tok.threads}


@pytest.mark.skipif(sys.platform != "linux", reason="threads have their own priority on Linux only")
def test_pool_threads_run_at_the_workers_niceness_not_the_loops() -> None:
    """Tokenising a pile of prompts must not take the CPU from the event loop or the stage
    workers: the pool's threads are niced like Ray's workers, the API process itself is not."""

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = niceness()
    pool = CpuPool(threads=1, max_pending_cost=10)
    try:
        in_pool = asyncio.run(pool.run(1, niceness))
    finally:
        pool.shutdown()
    assert in_pool >= WORKER_NICENESS > 0
    assert niceness() == before


def test_a_prompt_that_cannot_fit_is_refused_without_tokenising() -> None:
    """With at most 2 characters per token, 9,000 characters are over 4,096 tokens whatever the
    tokens: a 400 at once, the (blocked) tokenizer never called."""
    tok = BlockingTokenizer()
    served = dataclasses.replace(served_model(tok, context_len=4096), max_token_chars=2)
    app = create_app(SlowEcho(), served)  # type: ignore[arg-type]
    with running(app) as base:
        for path, body in [
            ("/v1/completions", _completion(prompt="x" * 9000)),
            ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x" * 9000}]}),
        ]:
            error = _error(_post(base, body, path), 400)
            assert error["code"] == "context_length_exceeded" and error["param"] in ("prompt", "messages")
    assert tok.threads == []
    tok.gate.set()


# ---- models and logprobs, through the official client ---------------------------------------------
def test_models_by_id(client: openai.OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "e2llm")
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-9")
    assert err.value.code == "model_not_found"


def test_chat_logprobs_in_openai_shape(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and [t.token for t in content] == ["a", "b", "c"]
    assert [t.logprob for t in content] == [-0.5] * 3
    assert [(x.token, x.logprob) for x in content[0].top_logprobs] == [("a", -0.5), ("b", -1.0)]
    assert content[0].bytes == [ord("a")]
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_in_openai_shape(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="hi", max_tokens=3, logprobs=2)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens == ["a", "b", "c"] and lp.token_logprobs == [-0.5] * 3
    assert lp.top_logprobs is not None and lp.top_logprobs[1] == {"b": -0.5, "c": -1.0}
    assert lp.text_offset == [0, 1, 2]


def test_streamed_logprobs_cover_every_token_once(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        logprobs=True,
        top_logprobs=1,
        stream=True,
    )
    tokens, text = [], ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                tokens += [t.token for t in choice.logprobs.content]
    assert text == "abcde" and tokens == list("abcde")

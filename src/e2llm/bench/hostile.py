"""Hostile and careless requests against a live server: each must get a 4xx OpenAI error body
that gives nothing internal away, and the server must answer `/health` right after.

`corpus` builds the requests, grouped by kind (malformed JSON, loose types, out-of-range values,
unsupported parameters, bad prompts, bad model, wrong content type, foreign Host, API key, too
large, unknown routes); `play` sends them one by one and records what came back. Used by
`tests/runtime/test_api_hostile.py` (all must pass) and `benchmarks/bench_hostile.py` (the
figures). Slow clients (trickled heads and bodies) are `tests/runtime/test_http_limits.py`'s.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# What must never appear in an error body: tracebacks, source paths, exception names, addresses.
LEAKS = (
    "Traceback",
    'File "',
    '.py"',
    ".py,",
    "site-packages",
    "/home/",
    "/root/",
    "/work/",
    "RayTaskError",
    "ActorDiedError",
    "Exception",
    " at 0x",
)


@dataclass(frozen=True)
class Hostile:
    kind: str
    name: str
    path: str
    body: bytes | None = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    with_key: bool = True
    json_content: bool = True


@dataclass(frozen=True)
class Outcome:
    request: Hostile
    status: int
    body: str
    healthy_after: bool

    @property
    def error(self) -> dict[str, Any] | None:
        try:
            error = json.loads(self.body)["error"]
        except (ValueError, KeyError, TypeError):
            return None
        return error if isinstance(error, dict) else None

    @property
    def ok(self) -> bool:
        """A 4xx with an OpenAI error object, nothing internal in it, the server healthy after."""
        error = self.error
        shaped = error is not None and set(error) == {"message", "type", "param", "code"}
        leaked = any(s in self.body for s in LEAKS)
        return 400 <= self.status < 500 and shaped and not leaked and self.healthy_after


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def corpus(model: str, key: str | None, max_body_bytes: int = 1 << 20) -> list[Hostile]:
    """Every hostile request, for a server of `model` with API key `key` (None: no key)."""
    return list(_corpus(model, key, max_body_bytes))


def _corpus(model: str, key: str | None, max_body_bytes: int) -> Iterator[Hostile]:
    chat, comp = "/v1/chat/completions", "/v1/completions"
    msgs = [{"role": "user", "content": "hi"}]
    base: dict[str, dict[str, Any]] = {
        chat: {"model": model, "messages": msgs, "max_tokens": 2},
        comp: {"model": model, "prompt": "hi"},
    }

    def with_(path: str, **fields: Any) -> bytes:
        return _j({**base[path], **fields})

    for name, raw in [
        ("truncated", b'{"model": "' + model.encode() + b'", "messages": ['),
        ("trailing garbage", _j(base[chat]) + b" }}"),
        ("not UTF-8", b"\xff\xfe{}"),
        ("empty body", b""),
        ("deep nesting", b"[" * 5000 + b"]" * 5000),
        ("5000-digit integer", b'{"model": "m", "max_tokens": ' + b"7" * 5000 + b"}"),
        ("NaN literal", b'{"model": "m", "messages": [], "temperature": NaN}'),
        ("Infinity literal", b'{"model": "m", "messages": [], "top_p": Infinity}'),
        ("null", b"null"),
        ("array", b"[1, 2, 3]"),
        ("string", b'"hello"'),
    ]:
        yield Hostile("malformed JSON", name, chat, raw)

    loose: dict[str, list[Any]] = {
        "max_tokens": [True, "10", 10.0, [5], {"n": 5}],
        "temperature": [True, "0.5", [0.5]],
        "top_p": [False, "1"],
        "seed": [True, "42", 4.2],
        "stream": ["yes", 1, "true"],
        "stop": [5, [1, 2], {"s": 1}],
        "n": [True, "1", 1.0],
        "ignore_eos": ["false", 0],
        "min_tokens": [True, "3"],
        "presence_penalty": [True, "0.5"],
        "frequency_penalty": ["1"],
        "logit_bias": [[1, 2], "x", {"1": "5"}, {"1": True}],
        "stream_options": ["yes", {"include_usage": "yes"}],
        "model": [5, None, ["m"]],
    }
    for path in (chat, comp):
        for fname, values in loose.items():
            for value in values:
                yield Hostile("loose type", f"{path} {fname}={value!r}", path, with_(path, **{fname: value}))
    for value in [1, "true", "yes"]:
        yield Hostile("loose type", f"chat logprobs={value!r}", chat, with_(chat, logprobs=value))
    for value in ["2", True, 1.5]:
        yield Hostile("loose type", f"completions logprobs={value!r}", comp, with_(comp, logprobs=value))

    out_of_range: list[tuple[str, dict[str, Any]]] = [
        ("temperature -1", {"temperature": -1}),
        ("temperature 3", {"temperature": 3}),
        ("top_p 0", {"top_p": 0}),
        ("top_p 1.5", {"top_p": 1.5}),
        ("max_tokens 0", {"max_tokens": 0}),
        ("max_tokens -1", {"max_tokens": -1}),
        ("seed 2^80", {"seed": 2**80}),
        ("min_tokens -1", {"min_tokens": -1}),
        ("n 2", {"n": 2}),
        ("n 0", {"n": 0}),
        ("5 stop strings", {"stop": ["a", "b", "c", "d", "e"]}),
        ("presence_penalty 2.5", {"presence_penalty": 2.5}),
        ("frequency_penalty -3", {"frequency_penalty": -3}),
        ("logit_bias 101", {"logit_bias": {"5": 101}}),
        ("logit_bias key not an id", {"logit_bias": {"five": 1}}),
        ("logit_bias id past the vocabulary", {"logit_bias": {"999999999": 1}}),
        ("logit_bias negative id", {"logit_bias": {"-1": 1}}),
        ("logit_bias 2000 entries", {"logit_bias": {str(i): 1 for i in range(2000)}}),
    ]
    for name, extra in out_of_range:
        yield Hostile("out of range", f"chat {name}", chat, with_(chat, **extra))
    yield Hostile("out of range", "top_logprobs 21", chat, with_(chat, logprobs=True, top_logprobs=21))
    yield Hostile("out of range", "top_logprobs without logprobs", chat, with_(chat, top_logprobs=2))
    yield Hostile("out of range", "completions logprobs 21", comp, with_(comp, logprobs=21))

    unsupported: list[tuple[str, str, Any]] = [
        (comp, "echo", True),
        (comp, "best_of", 3),
        (comp, "suffix", "}"),
        (chat, "response_format", {"type": "json_object"}),
        (chat, "response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
        (chat, "tools", [{"type": "function", "function": {"name": "f"}}]),
        (chat, "tool_choice", "auto"),
        (chat, "functions", [{"name": "f"}]),
        (chat, "function_call", {"name": "f"}),
        (chat, "audio", {"voice": "alloy", "format": "wav"}),
        (chat, "modalities", ["audio"]),
        (chat, "prediction", {"type": "content", "content": "x"}),
        (comp, "top_k", 40),
        (comp, "min_p", 0.1),
        (comp, "repetition_penalty", 1.3),
        (chat, "use_beam_search", True),
    ]
    for path, pname, value in unsupported:
        yield Hostile("unsupported parameter", f"{pname}={value!r}", path, with_(path, **{pname: value}))

    for name, prompt in [
        ("empty string", ""),
        ("[empty string]", [""]),
        ("empty list", []),
        ("two prompts", ["a", "b"]),
        ("token lists", [[1, 2], [3]]),
        ("token id past the vocabulary", [1, 10**9]),
        ("negative token id", [-5]),
        ("mixed list", ["a", 1]),
        ("far past the context", "word " * 20000),
        ("a megabyte, past the context", "word " * ((max_body_bytes - 200) // 5)),
    ]:
        yield Hostile("bad prompt", f"prompt {name}", comp, with_(comp, prompt=prompt))
    for name, messages in [
        ("empty", []),
        ("not a list", "hi"),
        ("unknown role", [{"role": "wizard", "content": "hi"}]),
        ("no content", [{"role": "user"}]),
        ("content a number", [{"role": "user", "content": 5}]),
        ("message a string", ["hi"]),
        ("past the context", [{"role": "user", "content": "hi " * 20000}]),
    ]:
        yield Hostile("bad prompt", f"messages {name}", chat, with_(chat, messages=messages))

    yield Hostile("bad model", "unknown model", chat, with_(chat, model="gpt-9"))
    yield Hostile("bad model", "no model", chat, _j({"messages": msgs}))
    yield Hostile("bad model", "GET unknown model", f"/v1/models/{model}-nope", method="GET")

    for ctype in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]:
        name = ctype or "none"
        headers = {"content-type": ctype} if ctype else {}
        yield Hostile("wrong content type", name, chat, _j(base[chat]), headers=headers, json_content=False)
    replan = "/admin/replan"
    yield Hostile("wrong content type", "no content type to /admin/replan", replan, b"", json_content=False)

    for host in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"]:
        yield Hostile("foreign Host", host, chat, _j(base[chat]), headers={"host": host})
        yield Hostile("foreign Host", f"GET / as {host}", "/", method="GET", headers={"host": host})

    if key is not None:
        for name, auth in [("no key", None), ("wrong key", "Bearer nope"), ("key without Bearer", key)]:
            headers = {} if auth is None else {"authorization": auth}
            yield Hostile("API key", name, chat, _j(base[chat]), headers=headers, with_key=False)
        yield Hostile("API key", "metrics without key", "/metrics", method="GET", with_key=False)
        yield Hostile("API key", "status without key", "/v1/status", method="GET", with_key=False)

    big = b'{"model": "m", "prompt": "' + b"x" * max_body_bytes + b'"}'
    yield Hostile("too large", "body over the limit", comp, big)

    yield Hostile("unknown route", "GET /v1/completions", comp, method="GET")
    yield Hostile("unknown route", "PUT /v1/chat/completions", chat, _j(base[chat]), method="PUT")
    embed = _j({"model": model, "input": "x"})
    yield Hostile("unknown route", "POST /v1/embeddings", "/v1/embeddings", embed)
    yield Hostile("unknown route", "path traversal", "/v1/../../etc/passwd", method="GET")


def play(url: str, requests: list[Hostile], key: str | None) -> list[Outcome]:
    """Send each request (then `GET /health`) and record the answers."""
    outcomes = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for req in requests:
            headers = dict(req.headers)
            if req.json_content:
                headers.setdefault("content-type", "application/json")
            if req.with_key and key is not None:
                headers.setdefault("authorization", f"Bearer {key}")
            r = client.request(req.method, req.path, content=req.body, headers=headers)
            healthy = client.get("/health").status_code == 200
            outcomes.append(Outcome(req, r.status_code, r.text, healthy))
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Per kind: requests tried, answered as they must be (`Outcome.ok`), and by status."""
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in outcomes:
        row = table[o.request.kind]
        row["tried"] += 1
        row["ok"] += o.ok
        row[str(o.status)] += 1
    return {kind: dict(row) for kind, row in table.items()}

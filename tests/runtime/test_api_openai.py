"""The OpenAI parameters a serving engine is expected to have, on a live `e2llm serve` (real Ray,
real SmolLM2; the server of `conftest.api_server`), through the official `openai` client:
logprobs with top_logprobs, presence/frequency penalties, logit bias, `GET /v1/models/{id}`.
Also: an empty prompt is a 400 (it used to reach the stages and come back as a 500 carrying a
Ray traceback), a non-streaming client that hangs up frees its KV on every stage, and the API
key is in no Ray process's environment.
"""

from __future__ import annotations

import collections
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servekit import API_KEY, API_MODEL

from e2llm.bench.local_server import LocalServer
from e2llm.runtime.weights import PreparedModel

pytestmark = pytest.mark.slow

PROMPT = "One, two, three,"


@pytest.fixture(scope="module")
def client(api_server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(smollm2_prepared: PreparedModel) -> Any:
    return smollm2_prepared.tokenizer()


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}"}


def test_chat_logprobs_are_the_greedy_choice_and_its_alternatives(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(
        model=API_MODEL, messages=question, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(t.token for t in content).startswith(choice.message.content or "-")
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        best = t.top_logprobs[0]
        assert best.token == t.token and math.isclose(best.logprob, t.logprob, abs_tol=1e-4)  # greedy
        values = [x.logprob for x in t.top_logprobs]
        assert values == sorted(values, reverse=True)
    assert sum(math.exp(x.logprob) for x in content[0].top_logprobs) <= 1.0 + 1e-6


def test_completion_logprobs_stream_and_whole_agree(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=API_MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    lp = whole.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert len(lp.tokens) == 8 and "".join(lp.tokens) == whole.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    streamed: list[tuple[str, float]] = []
    for chunk in client.completions.create(
        model=API_MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2, stream=True
    ):
        for c in chunk.choices:
            if c.logprobs is not None and c.logprobs.tokens:
                streamed += list(zip(c.logprobs.tokens, c.logprobs.token_logprobs or [], strict=True))
    assert [t for t, _ in streamed] == lp.tokens  # every token once, in order
    assert [v for _, v in streamed] == pytest.approx(lp.token_logprobs, abs=1e-4)


def test_frequency_penalty_curbs_repetition(client: openai.OpenAI) -> None:
    def tokens(**kw: Any) -> list[str]:
        out = client.completions.create(
            model=API_MODEL, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=0, **kw
        )
        assert out.choices[0].logprobs is not None and out.choices[0].logprobs.tokens is not None
        return out.choices[0].logprobs.tokens

    plain, curbed = tokens(), tokens(frequency_penalty=2.0, presence_penalty=1.0)
    most = collections.Counter(plain).most_common(1)[0][1]
    assert most >= 3, plain  # greedy counting repeats ", " (the premise of this test)
    assert curbed != plain and collections.Counter(curbed).most_common(1)[0][1] < most, (plain, curbed)


def test_logit_bias_bans_and_forces_tokens(client: openai.OpenAI, tokenizer: Any) -> None:
    prompt = "The capital of France is"

    def first(**kw: Any) -> str:
        out = client.completions.create(model=API_MODEL, prompt=prompt, max_tokens=1, temperature=0, **kw)
        return out.choices[0].text

    greedy = first()
    (greedy_id,) = tokenizer.encode(greedy)
    assert first(logit_bias={str(greedy_id): -100}) != greedy
    (london,) = tokenizer.encode(" London")
    assert first(logit_bias={str(london): 100}) == " London"


def test_models_by_id(client: openai.OpenAI) -> None:
    assert client.models.retrieve(API_MODEL).id == API_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


@pytest.mark.parametrize("prompt", ["", [""], []])
def test_an_empty_prompt_is_a_400_not_a_traceback(client: openai.OpenAI, prompt: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=API_MODEL, prompt=prompt, max_tokens=4)
    assert err.value.param == "prompt" and "Traceback" not in str(err.value.body)


def test_a_non_streaming_client_that_hangs_up_frees_its_kv(api_server: LocalServer) -> None:
    url = api_server.url
    before = httpx.get(f"{url}/metrics", headers=_auth(), timeout=10).text
    body = {"model": API_MODEL, "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before 4,000 tokens
        httpx.post(f"{url}/v1/completions", json=body, headers=_auth(), timeout=httpx.Timeout(30, read=8))
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(f"{url}/health", timeout=10).json()
        idle = all(s["sequences"] == 0 and s["kv_bytes"] == 0 for s in health["stages"])
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert idle, health  # freed on every stage, PREFILL and both DECODER stages
    after = httpx.get(f"{url}/metrics", headers=_auth(), timeout=10).text
    assert _cancelled(after) == _cancelled(before) + 1


def _cancelled(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('e2llm_requests_total{outcome="cancelled"}'):
            return float(line.split()[-1])
    return 0.0


def test_the_api_key_is_in_no_ray_process(api_server: LocalServer) -> None:
    """The key came in `E2LLM_API_KEY`: only the API process may have it, not Ray's daemons
    (in the server's process group) nor the stage workers (Ray starts them in sessions of their own)."""
    health = httpx.get(f"{api_server.url}/health", timeout=10).json()
    workers = {s["pid"] for s in health["stages"]}
    group = {
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(int(p.name)) == api_server.process.pid
    }
    others = (group | workers) - {api_server.process.pid}
    assert len(workers) == 3 and len(group - workers) >= 3, (workers, group)  # GCS, raylet, agents...
    for pid in others:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        assert b"E2LLM_API_KEY" not in environ and API_KEY.encode() not in environ, pid


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None

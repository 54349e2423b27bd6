"""Serving one parsed completion request: tokenised prompt in, a JSON body or an SSE stream out.

`Completions.respond` turns a validated `ChatRequest`/`CompletionRequest` into a `Generation`,
submits it to the deployment and answers: the whole completion, or a stream that starts with the
first token. Until the response starts it watches for a client that hangs up (`_client_gone`),
and a stream is watched by Starlette's `StreamingResponse`: either way the generation is
cancelled and its KV freed. A failed generation is answered as `_event_error` says: a 503 with
its reason, anything else a generic 500 naming the request id (details in the server log).
Prompts are tokenised on `CpuPool` threads, off the event loop (`tokenise`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from e2llm.runtime import openai_protocol as oa
from e2llm.runtime.cpu_pool import CpuPool, PoolFull
from e2llm.runtime.generation import Generation, TextStream, TokenEvent
from e2llm.runtime.http_limits import RETRY_AFTER_S
from e2llm.runtime.openai_logprobs import Logprobs
from e2llm.runtime.service import Deployment

log = logging.getLogger(__name__)

QUEUE_HEADER = "x-e2llm-queue-s"
_INVALID = "invalid_request_error"
_Req = oa.ChatRequest | oa.CompletionRequest


@dataclass(frozen=True)
class ServedModel:
    """What the API needs to know about the model it serves."""

    name: str
    tokenizer: Any  # a transformers tokenizer with a chat template
    context_len: int  # prompt + generated tokens must fit
    eos_ids: frozenset[int]
    encode_chat: Callable[[Any, list[dict[str, str]]], list[int]]
    max_token_chars: int | None = None  # see `text.max_token_chars`; None: always tokenise


class Completions:
    def __init__(self, deployment: Deployment, served: ServedModel, cpu: CpuPool):
        self.deployment = deployment
        self.served = served
        self.cpu = cpu

    async def tokenise(self, chars: int, param: str, fn: Callable[..., Any], *args: Any) -> list[int]:
        """`fn(*args)`, a tokenizer call on `chars` characters, on a pool thread (503 when it is
        full); a text that cannot fit the context whatever its tokens is refused first (400)."""
        served = self.served
        if served.max_token_chars and chars > served.context_len * served.max_token_chars:
            message = (
                f"This model's maximum context length is {served.context_len} tokens; a prompt of "
                f"{chars} characters cannot fit in it"
            )
            raise oa.ApiError(400, message, _INVALID, param, "context_length_exceeded")
        try:
            return list(await self.cpu.run(chars, fn, *args))
        except PoolFull:
            retry = {"retry-after": str(RETRY_AFTER_S)}
            message = "server busy tokenising other prompts; retry later"
            raise oa.ApiError(503, message, "server_error", None, "server_busy", retry) from None

    async def respond(self, request: Request, req: _Req, prompt_ids: list[int], chat: bool) -> Response:
        served = self.served
        prompt_param = "messages" if chat else "prompt"
        max_tokens = max_tokens_for(
            req.requested_max_tokens, len(prompt_ids), served.context_len, prompt_param
        )
        request_id = request.state.request_id
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        gen = Generation(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            eos_ids=served.eos_ids,
            text=TextStream(served.tokenizer, req.stop_list),
            min_tokens=min(req.min_tokens, max_tokens),
            ignore_eos=req.ignore_eos,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            logit_bias=logit_bias_pairs(req.logit_bias, len(served.tokenizer)),
            top_logprobs=req.requested_logprobs,
            seq_id=rid,
        )
        self.deployment.submit(gen)
        logprobs = Logprobs(served.tokenizer) if gen.top_logprobs is not None else None
        # Until the response starts (a stream's first token, a whole completion), this task
        # notices a client that hangs up; a started stream is watched by the StreamingResponse.
        gone = asyncio.create_task(_client_gone(request))
        try:
            events = [await _next_event(gen, gone)]
            while not req.stream and events[-1].finish_reason is None:
                events.append(await _next_event(gen, gone))
        finally:
            gone.cancel()
        event = events[-1]
        if event.finish_reason == "error":
            raise _event_error(event, request_id)
        headers = {QUEUE_HEADER: f"{gen.waiting_s:.6f}"}
        if req.stream:
            stream = self._sse(gen, event, rid, req, chat, len(prompt_ids), logprobs)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        use = oa.usage(len(prompt_ids), len(gen.generated))
        text = "".join(e.text for e in events)
        lp = None if logprobs is None else _logprobs(logprobs, events, chat)
        build = oa.chat_response if chat else oa.completion_response
        return JSONResponse(build(rid, served.name, text, event.finish_reason, use, lp), headers=headers)

    async def _sse(
        self,
        gen: Generation,
        first: TokenEvent,
        rid: str,
        req: _Req,
        chat: bool,
        n_prompt: int,
        logprobs: Logprobs | None,
    ) -> AsyncIterator[str]:
        name, request_id = self.served.name, rid.split("-", 1)[1]

        def chunk(text: str | None, finish: str | None, events: list[TokenEvent]) -> str:
            lp = None if logprobs is None else _logprobs(logprobs, events, chat)
            if chat:
                delta = {} if text is None else {"content": text}
                return _data(oa.chat_chunk(rid, name, delta, finish, None, lp))
            return _data(oa.completion_chunk(rid, name, text or "", finish, None, lp))

        try:
            if chat:
                yield _data(oa.chat_chunk(rid, name, {"role": "assistant", "content": ""}, None))
            event = first
            pending: list[TokenEvent] = []  # tokens whose logprobs go with the next chunk
            while True:
                if event.finish_reason == "error":
                    yield _data(_event_error(event, request_id).body)
                    break
                pending.append(event)
                # One chunk per generated token, even when it completes no character yet (a
                # multi-byte character's first bytes, text held back for a stop string): a client
                # timing tokens (e2llm bench) sees each when it is generated.
                if event.text or event.token_id is not None:
                    yield chunk(event.text, None, pending)
                    pending = []
                if event.finish_reason is not None:
                    yield chunk(None, event.finish_reason, pending)
                    break
                event = await gen.events.get()
            if req.include_usage:
                use = oa.usage(n_prompt, len(gen.generated))
                build = oa.chat_chunk if chat else oa.completion_chunk
                yield _data(build(rid, name, {} if chat else "", None, use))  # type: ignore[arg-type]
            yield "data: [DONE]\n\n"
        finally:
            if not gen.done:
                gen.cancel()  # the client went away mid-stream: stop and free the KV


def max_tokens_for(
    requested: int | None, prompt_len: int, context_len: int, prompt_param: str = "messages"
) -> int:
    """Tokens to generate: as requested, but never past the model context (400 if the prompt
    alone fills it, or if `max_tokens` is not positive)."""
    if requested is not None and requested <= 0:
        message = f"max_tokens must be at least 1, got {requested}"
        raise oa.ApiError(400, message, _INVALID, "max_tokens")
    room = context_len - prompt_len
    if room <= 0:
        message = f"This model's maximum context length is {context_len} tokens; the prompt has {prompt_len}"
        raise oa.ApiError(400, message, _INVALID, prompt_param, "context_length_exceeded")
    return room if requested is None else min(requested, room)


def logit_bias_pairs(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs; 400 for a key that is not a token id."""
    pairs = []
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab):
            message = f"logit_bias keys must be token ids in [0, {vocab}), got {key[:20]!r}"
            raise oa.ApiError(400, message, _INVALID, "logit_bias")
        pairs.append((int(key), value))
    return tuple(pairs)


def _event_error(event: TokenEvent, request_id: str) -> oa.ApiError:
    """The error a client sees for a failed generation: a 503 says why (no live replica...),
    anything else is an internal error, told generically; the details go to the log."""
    if event.status == 503:
        return oa.ApiError(503, event.error or "service unavailable", "server_error", None, "unavailable")
    log.error("request %s failed: %s", request_id, event.error)
    return oa.internal_error(request_id)


def _logprobs(fmt: Logprobs, events: list[TokenEvent], chat: bool) -> dict[str, Any] | None:
    entries = [(e.token_id, e.logprob) for e in events if e.token_id is not None and e.logprob is not None]
    if not entries:
        return None
    return fmt.chat(entries) if chat else fmt.completion(entries)


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _client_gone(request: Request) -> None:
    """Returns when the client has disconnected (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next_event(gen: Generation, gone: asyncio.Task[None]) -> TokenEvent:
    """The next event of `gen`; if the client disconnects first (`gone`), cancels the generation
    (the serving loop then drops it and frees its KV on every stage) and answers 499."""
    get = asyncio.ensure_future(gen.events.get())
    try:
        await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not get.done():
            get.cancel()
            gen.cancel()  # the client left, or this handler was cancelled (server shutdown)
    if get.cancelled():
        raise oa.ApiError(499, "client closed the request", _INVALID)
    return get.result()

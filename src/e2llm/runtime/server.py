"""The HTTP API: OpenAI-compatible endpoints over a `Deployment`, plus `/health` and `/metrics`.

Errors are OpenAI error objects (`{"error": {"message", "type", "param", "code"}}`) and never take
the server down. A request's server-side waiting time is returned in the `x-e2llm-queue-s`
header (for streams: the wait before the prefill started, since headers go out with the first
token). With an API key set, every route except `/health` and the dashboard's static files
(`/`, `/dashboard/*`: no data in them) needs `Authorization: Bearer KEY`; so does
`GET /v1/status`, the JSON the dashboard polls (`runtime.status`).
Body size, body read time and requests in flight are bounded (`http_limits`): 413, 408, 429/503.
The `Host` header, the key, the JSON content type, request ids and the generic 500 are
`http_access`'s; tokenising runs in a bounded thread pool (`cpu_pool`): 503 when it is full.
A client that goes away, streaming or not, cancels its generation (its KV is freed everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from e2llm.errors import InputError
from e2llm.runtime import openai_protocol as oa
from e2llm.runtime.cpu_pool import CpuPool, PoolFull
from e2llm.runtime.dashboard import PUBLIC_PATHS as DASHBOARD_FILES
from e2llm.runtime.dashboard import add_dashboard
from e2llm.runtime.generation import Generation, TextStream, TokenEvent
from e2llm.runtime.http_access import AccessRules
from e2llm.runtime.http_limits import RETRY_AFTER_S, HttpLimits, InflightLimiter, read_json_body
from e2llm.runtime.openai_logprobs import Logprobs
from e2llm.runtime.service import Deployment
from e2llm.runtime.status import Status, deployment_status

log = logging.getLogger(__name__)

QUEUE_HEADER = "x-e2llm-queue-s"
PUBLIC_PATHS = frozenset({"/health", *DASHBOARD_FILES})  # served without the API key
_M = TypeVar("_M", bound=BaseModel)
_P = ParamSpec("_P")
_T = TypeVar("_T")
_Req = oa.ChatRequest | oa.CompletionRequest
_INVALID = "invalid_request_error"


@dataclass(frozen=True)
class ServedModel:
    """What the API needs to know about the model it serves."""

    name: str
    tokenizer: Any  # a transformers tokenizer with a chat template
    context_len: int  # prompt + generated tokens must fit
    eos_ids: frozenset[int]
    encode_chat: Callable[[Any, list[dict[str, str]]], list[int]]


def create_app(
    deployment: Deployment,
    served: ServedModel,
    api_key: str | None = None,
    limits: HttpLimits | None = None,
    allowed_hosts: frozenset[str] | None = None,
) -> FastAPI:
    """The app; `allowed_hosts` are the Host names it answers (None: any; `e2llm serve` derives
    them from its bind address, see `http_access.allowed_hosts_for`)."""
    limits = limits or HttpLimits()
    cpu = CpuPool(limits.tokenizer_threads, limits.tokenizer_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deployment.start()
        yield
        await deployment.stop()
        cpu.shutdown()

    app = FastAPI(title="e2llm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    started = time.time()
    # Added first, so it runs inside the access rules: unauthenticated requests take no slot.
    app.add_middleware(
        InflightLimiter, max_inflight=limits.max_inflight, unavailable=deployment.unavailable_reason
    )
    app.add_middleware(AccessRules, api_key=api_key, allowed_hosts=allowed_hosts, public_paths=PUBLIC_PATHS)

    @app.exception_handler(oa.ApiError)
    async def api_error(request: Request, exc: oa.ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = oa.ApiError(exc.status_code, str(exc.detail), "invalid_request_error")
        return JSONResponse(error.body, status_code=exc.status_code)

    async def off_loop(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await cpu.run(fn, *args, **kwargs)
        except PoolFull:
            retry = {"retry-after": str(RETRY_AFTER_S)}
            message = "server busy tokenising other prompts; retry later"
            raise oa.ApiError(503, message, "server_error", None, "server_busy", retry) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        status = await deployment.status()
        return {**status, "model": served.name, "uptime_s": round(time.time() - started, 3)}

    @app.get("/v1/status")
    async def status_route() -> Status:
        """The plan, the cluster, live per-replica figures and recent events (the dashboard's data)."""
        return deployment_status(deployment, await deployment.stage_stats(), served.name, started)

    add_dashboard(app)

    @app.post("/admin/replan")
    async def replan() -> JSONResponse:
        """Re-plan now on every available device: takes back a device that came back."""
        ok = await deployment.replan()
        status = await deployment.status()
        body = {"plan_generation": status["plan_generation"], "devices": status["devices"]}
        if not ok:
            error = oa.ApiError(503, str(status["replan_error"]), "server_error")
            return JSONResponse({**error.body, **body}, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        deployment.metrics.set_stage_stats(await deployment.stage_stats())
        return Response(deployment.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [oa.model_entry(served.name, int(started))]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        _check_model(model_id, served)
        return oa.model_entry(served.name, int(started))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = _parse(oa.ChatRequest, await read_json_body(request, limits), "chat")
        _check_model(req.model, served)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            prompt_ids = list(await off_loop(served.encode_chat, served.tokenizer, messages))
        except InputError as e:
            raise oa.ApiError(400, str(e), "invalid_request_error", "messages") from None
        return await _generate(request, req, prompt_ids, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = _parse(oa.CompletionRequest, await read_json_body(request, limits), "completions")
        _check_model(req.model, served)
        prompt = req.prompt
        if isinstance(prompt, list) and isinstance(prompt[0], int):
            prompt_ids = [int(t) for t in prompt]
            if any(not 0 <= t < len(served.tokenizer) for t in prompt_ids):
                raise oa.ApiError(
                    400, "prompt token id out of the vocabulary", "invalid_request_error", "prompt"
                )
        else:
            text = prompt if isinstance(prompt, str) else str(prompt[0])
            prompt_ids = list(await off_loop(served.tokenizer.encode, text))
        if not prompt_ids:
            raise oa.ApiError(400, "prompt has no tokens", "invalid_request_error", "prompt")
        return await _generate(request, req, prompt_ids, chat=False)

    async def _generate(
        request: Request, req: oa.ChatRequest | oa.CompletionRequest, prompt_ids: list[int], chat: bool
    ) -> Response:
        prompt_param = "messages" if chat else "prompt"
        max_tokens = _max_tokens(req.requested_max_tokens, len(prompt_ids), served.context_len, prompt_param)
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
            logit_bias=_logit_bias(req.logit_bias, len(served.tokenizer)),
            top_logprobs=req.requested_logprobs,
            seq_id=rid,
        )
        deployment.submit(gen)
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
        if req.stream:
            if event.finish_reason == "error":
                raise _event_error(event, request_id)
            headers = {QUEUE_HEADER: f"{gen.waiting_s:.6f}"}
            stream = _sse(gen, event, rid, req, chat, len(prompt_ids), logprobs)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        if event.finish_reason == "error":
            raise _event_error(event, request_id)
        use = oa.usage(len(prompt_ids), len(gen.generated))
        text = "".join(e.text for e in events)
        lp = None if logprobs is None else _logprobs(logprobs, events, chat)
        build = oa.chat_response if chat else oa.completion_response
        body = build(rid, served.name, text, event.finish_reason, use, lp)
        return JSONResponse(body, headers={QUEUE_HEADER: f"{gen.waiting_s:.6f}"})

    async def _sse(
        gen: Generation,
        first: TokenEvent,
        rid: str,
        req: oa.ChatRequest | oa.CompletionRequest,
        chat: bool,
        n_prompt: int,
        logprobs: Logprobs | None,
    ) -> AsyncIterator[str]:
        request_id = rid.split("-", 1)[1]
        try:
            if chat:
                yield _data(oa.chat_chunk(rid, served.name, {"role": "assistant", "content": ""}, None))
            event = first
            pending: list[TokenEvent] = []  # tokens whose logprobs go with the next chunk
            while True:
                if event.finish_reason == "error":
                    yield _data(_event_error(event, request_id).body)
                    break
                pending.append(event)
                lp = None if logprobs is None else _logprobs(logprobs, pending, chat)
                if event.text:
                    if chat:
                        yield _data(oa.chat_chunk(rid, served.name, {"content": event.text}, None, None, lp))
                    else:
                        yield _data(oa.completion_chunk(rid, served.name, event.text, None, None, lp))
                    pending, lp = [], None
                if event.finish_reason is not None:
                    finish = (
                        oa.chat_chunk(rid, served.name, {}, event.finish_reason, None, lp)
                        if chat
                        else oa.completion_chunk(rid, served.name, "", event.finish_reason, None, lp)
                    )
                    yield _data(finish)
                    break
                event = await gen.events.get()
            if req.include_usage:
                use = oa.usage(n_prompt, len(gen.generated))
                chunk = oa.chat_chunk if chat else oa.completion_chunk
                yield _data(chunk(rid, served.name, {} if chat else "", None, use))  # type: ignore[arg-type]
            yield "data: [DONE]\n\n"
        finally:
            if not gen.done:
                gen.cancel()  # the client went away mid-stream: stop and free the KV

    return app


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _parse(model: type[_M], body: Any, endpoint: str) -> _M:
    if not isinstance(body, dict):
        raise oa.ApiError(400, "the request body must be a JSON object", "invalid_request_error")
    oa.check_supported(body, endpoint)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise oa.validation_error(e) from None


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs; 400 for a key that is not a token id."""
    pairs = []
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab):
            message = f"logit_bias keys must be token ids in [0, {vocab}), got {key[:20]!r}"
            raise oa.ApiError(400, message, "invalid_request_error", "logit_bias")
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


def _check_model(name: str, served: ServedModel) -> None:
    if name != served.name:
        raise oa.ApiError(
            404,
            f"The model '{name}' does not exist; this server serves '{served.name}'",
            "invalid_request_error",
            "model",
            "model_not_found",
        )


def _max_tokens(
    requested: int | None, prompt_len: int, context_len: int, prompt_param: str = "messages"
) -> int:
    """Tokens to generate: as requested, but never past the model context (400 if the prompt
    alone fills it, or if `max_tokens` is not positive)."""
    if requested is not None and requested <= 0:
        raise oa.ApiError(
            400, f"max_tokens must be at least 1, got {requested}", "invalid_request_error", "max_tokens"
        )
    room = context_len - prompt_len
    if room <= 0:
        raise oa.ApiError(
            400,
            f"This model's maximum context length is {context_len} tokens; the prompt has {prompt_len}",
            "invalid_request_error",
            prompt_param,
            "context_length_exceeded",
        )
    return room if requested is None else min(requested, room)


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
        raise oa.ApiError(499, "client closed the request", "invalid_request_error")
    return get.result()

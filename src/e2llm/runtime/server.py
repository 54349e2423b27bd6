"""The HTTP API: OpenAI-compatible endpoints over a `Deployment`, plus `/health` and `/metrics`.

Errors are OpenAI error objects (`{"error": {"message", "type", "param", "code"}}`) and never take
the server down. A request's server-side waiting time is returned in the `x-e2llm-queue-s`
header (for streams: the wait before the prefill started, since headers go out with the first
token). With an API key set, every route except `/health` and the dashboard's static files
(`/`, `/dashboard/*`: no data in them) needs `Authorization: Bearer KEY`; so does
`GET /v1/status`, the JSON the dashboard polls (`runtime.status`).
Body size, body read time and requests in flight are bounded (`http_limits`): 413, 408, 429/503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from e2llm.errors import InputError
from e2llm.runtime import openai_protocol as oa
from e2llm.runtime.dashboard import PUBLIC_PATHS as DASHBOARD_FILES
from e2llm.runtime.dashboard import add_dashboard
from e2llm.runtime.generation import Generation, TextStream, TokenEvent
from e2llm.runtime.http_limits import HttpLimits, InflightLimiter, read_json_body
from e2llm.runtime.service import Deployment
from e2llm.runtime.status import Status, deployment_status

log = logging.getLogger(__name__)

QUEUE_HEADER = "x-e2llm-queue-s"
PUBLIC_PATHS = frozenset({"/health", *DASHBOARD_FILES})  # served without the API key
_M = TypeVar("_M", bound=BaseModel)
_Req = oa.ChatRequest | oa.CompletionRequest
_INVALID = "invalid_request_error"
DISCONNECT_POLL_S = 0.5


@dataclass(frozen=True)
class ServedModel:
    """What the API needs to know about the model it serves."""

    name: str
    tokenizer: Any  # a transformers tokenizer with a chat template
    context_len: int  # prompt + generated tokens must fit
    eos_ids: frozenset[int]
    encode_chat: Callable[[Any, list[dict[str, str]]], list[int]]


def create_app(
    deployment: Deployment, served: ServedModel, api_key: str | None = None, limits: HttpLimits | None = None
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deployment.start()
        yield
        await deployment.stop()

    limits = limits or HttpLimits()
    app = FastAPI(title="e2llm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    started = time.time()
    # Added before the key check, so it runs inside it: unauthenticated requests take no slot.
    app.add_middleware(
        InflightLimiter, max_inflight=limits.max_inflight, unavailable=deployment.unavailable_reason
    )

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if api_key and request.url.path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                error = oa.ApiError(
                    401, "invalid or missing API key", "invalid_request_error", None, "invalid_api_key"
                )
                return JSONResponse(error.body, status_code=401)
        return await call_next(request)

    @app.exception_handler(oa.ApiError)
    async def api_error(request: Request, exc: oa.ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = oa.ApiError(exc.status_code, str(exc.detail), "invalid_request_error")
        return JSONResponse(error.body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        error = oa.ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        return JSONResponse(error.body, status_code=500)

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
        entry = {"id": served.name, "object": "model", "created": int(started), "owned_by": "e2llm"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = _parse(oa.ChatRequest, await read_json_body(request, limits))
        _check_model(req.model, served)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            prompt_ids = list(served.encode_chat(served.tokenizer, messages))
        except InputError as e:
            raise oa.ApiError(400, str(e), "invalid_request_error", "messages") from None
        return await _generate(request, req, prompt_ids, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = _parse(oa.CompletionRequest, await read_json_body(request, limits))
        _check_model(req.model, served)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompt_ids = [int(t) for t in prompt]
            if any(not 0 <= t < len(served.tokenizer) for t in prompt_ids):
                raise oa.ApiError(
                    400, "prompt token id out of the vocabulary", "invalid_request_error", "prompt"
                )
        else:
            text = prompt if isinstance(prompt, str) else str(prompt[0])
            prompt_ids = list(served.tokenizer.encode(text))
        return await _generate(request, req, prompt_ids, chat=False)

    async def _generate(
        request: Request, req: oa.ChatRequest | oa.CompletionRequest, prompt_ids: list[int], chat: bool
    ) -> Response:
        max_tokens = _max_tokens(req.requested_max_tokens, len(prompt_ids), served.context_len)
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
        )
        deployment.submit(gen)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if req.stream:
            first = await _next_event(gen, request)
            if first.finish_reason == "error":
                raise oa.ApiError(first.status, first.error or "generation failed", "server_error")
            headers = {QUEUE_HEADER: f"{gen.waiting_s:.6f}"}
            stream = _sse(gen, first, rid, req, chat, len(prompt_ids))
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        parts = []
        while True:
            event = await _next_event(gen, request)
            parts.append(event.text)
            if event.finish_reason is not None:
                break
        if event.finish_reason == "error":
            raise oa.ApiError(event.status, event.error or "generation failed", "server_error")
        use = oa.usage(len(prompt_ids), len(gen.generated))
        build = oa.chat_response if chat else oa.completion_response
        body = build(rid, served.name, "".join(parts), event.finish_reason, use)
        return JSONResponse(body, headers={QUEUE_HEADER: f"{gen.waiting_s:.6f}"})

    async def _sse(
        gen: Generation,
        first: TokenEvent,
        rid: str,
        req: oa.ChatRequest | oa.CompletionRequest,
        chat: bool,
        n_prompt: int,
    ) -> AsyncIterator[str]:
        try:
            if chat:
                yield _data(oa.chat_chunk(rid, served.name, {"role": "assistant", "content": ""}, None))
            event = first
            while True:
                if event.finish_reason == "error":
                    error = oa.ApiError(event.status, event.error or "generation failed", "server_error")
                    yield _data(error.body)
                    break
                # One chunk per generated token, even when it completes no character yet (a
                # multi-byte character's first bytes, text held back for a stop string): a client
                # timing tokens (e2llm bench) sees each when it is generated.
                if event.text or event.token_id is not None:
                    if chat:
                        yield _data(oa.chat_chunk(rid, served.name, {"content": event.text}, None))
                    else:
                        yield _data(oa.completion_chunk(rid, served.name, event.text, None))
                if event.finish_reason is not None:
                    finish = (
                        oa.chat_chunk(rid, served.name, {}, event.finish_reason)
                        if chat
                        else oa.completion_chunk(rid, served.name, "", event.finish_reason)
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


def _parse(model: type[_M], body: Any) -> _M:
    if not isinstance(body, dict):
        raise oa.ApiError(400, "the request body must be a JSON object", "invalid_request_error")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise oa.ApiError(400, f"{param}: {err['msg']}", "invalid_request_error", param) from None


def _check_model(name: str, served: ServedModel) -> None:
    if name != served.name:
        raise oa.ApiError(
            404,
            f"The model '{name}' does not exist; this server serves '{served.name}'",
            "invalid_request_error",
            "model",
            "model_not_found",
        )


def _max_tokens(requested: int | None, prompt_len: int, context_len: int) -> int:
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
            "messages",
            "context_length_exceeded",
        )
    return room if requested is None else min(requested, room)


async def _next_event(gen: Generation, request: Request) -> TokenEvent:
    """The next event of `gen`; cancels the generation if the client disconnects meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(gen.events.get(), timeout=DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                gen.cancel()
                raise oa.ApiError(499, "client closed the request", "invalid_request_error") from None
        except asyncio.CancelledError:
            gen.cancel()
            raise

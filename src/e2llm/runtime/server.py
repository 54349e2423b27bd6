"""The HTTP API: OpenAI-compatible endpoints over a `Deployment`, plus `/health` and `/metrics`.

Errors are OpenAI error objects (`{"error": {"message", "type", "param", "code"}}`) and never take
the server down. A request's server-side waiting time is returned in the `x-e2llm-queue-s`
header (for streams: the wait before the prefill started, since headers go out with the first
token). With an API key set, every route except `/health` and the dashboard's static files
(`/`, `/dashboard/*`: no data in them) needs `Authorization: Bearer KEY`; so does
`GET /v1/status`, the JSON the dashboard polls (`runtime.status`).
Body size, body read time and requests in flight are bounded (`http_limits`): 413, 408, 429/503.
The `Host` header, the key, the JSON content type, request ids and the generic 500 are
`http_access`'s. The routes here validate and tokenise (in a bounded thread pool, `cpu_pool`);
`completions` serves the generation, streamed or not, and cancels it if the client goes away.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from e2llm.errors import InputError
from e2llm.runtime import openai_protocol as oa
from e2llm.runtime.completions import QUEUE_HEADER, Completions, ServedModel
from e2llm.runtime.cpu_pool import CpuPool
from e2llm.runtime.dashboard import PUBLIC_PATHS as DASHBOARD_FILES
from e2llm.runtime.dashboard import add_dashboard
from e2llm.runtime.http_access import AccessRules
from e2llm.runtime.http_limits import HttpLimits, InflightLimiter, read_json_body
from e2llm.runtime.service import Deployment
from e2llm.runtime.status import Status, deployment_status

__all__ = ["QUEUE_HEADER", "ServedModel", "create_app"]  # ServedModel lives with `Completions`

PUBLIC_PATHS = frozenset({"/health", *DASHBOARD_FILES})  # served without the API key
_M = TypeVar("_M", bound=BaseModel)


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
    cpu = CpuPool(limits.tokenizer_threads, limits.tokenizer_queue_chars)
    completions = Completions(deployment, served, cpu)

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
        chars = sum(len(m["content"]) for m in messages)
        try:
            prompt_ids = await completions.tokenise(
                chars, "messages", served.encode_chat, served.tokenizer, messages
            )
        except InputError as e:
            raise oa.ApiError(400, str(e), "invalid_request_error", "messages") from None
        return await completions.respond(request, req, prompt_ids, chat=True)

    @app.post("/v1/completions")
    async def completion(request: Request) -> Response:
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
            prompt_ids = await completions.tokenise(len(text), "prompt", served.tokenizer.encode, text)
        if not prompt_ids:
            raise oa.ApiError(400, "prompt has no tokens", "invalid_request_error", "prompt")
        return await completions.respond(request, req, prompt_ids, chat=False)

    return app


def _parse(model: type[_M], body: Any, endpoint: str) -> _M:
    if not isinstance(body, dict):
        raise oa.ApiError(400, "the request body must be a JSON object", "invalid_request_error")
    oa.check_supported(body, endpoint)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise oa.validation_error(e) from None


def _check_model(name: str, served: ServedModel) -> None:
    if name != served.name:
        raise oa.ApiError(
            404,
            f"The model '{name}' does not exist; this server serves '{served.name}'",
            "invalid_request_error",
            "model",
            "model_not_found",
        )

"""OpenAI API shapes: request bodies (validated), response objects and streaming chunks.

Only what e2llm serves: one choice per request (`n` = 1), text in and text out, with logprobs,
presence/frequency penalties and logit bias. Types are strict. OpenAI parameters that e2llm does
not implement (`echo`, `best_of`, `suffix`, `response_format`, `tools`...) are refused with a 400
naming them (`check_supported`); fields OpenAI does not define are ignored, as OpenAI-compatible
servers usually do, so newer clients keep working.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API (and vLLM's default limit)
MAX_LOGIT_BIAS = 1024  # entries of one request's logit_bias
_INVALID = "invalid_request_error"


class ApiError(Exception):
    """An error the client caused or must see, rendered as OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


class _Strict(BaseModel):
    # strict: JSON types as declared (no `true` for 1, no "10" for 10, no "yes" for true)
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class _Common(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # torch seeds are 64-bit
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Bias] | None = Field(None, max_length=MAX_LOGIT_BIAS)  # token id -> bias
    # vLLM extensions, for benchmarks that need long outputs
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """Content as text (multi-part content keeps its text parts)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        # an ApiError passes through pydantic as it is, with its own `param`
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", _INVALID, "top_logprobs")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(v, list) and v and isinstance(v[0], str) and len(v) != 1:
            raise ValueError("exactly one prompt per request (batch the requests instead)")
        if not v or v == [""]:
            raise ValueError("prompt must not be empty")
        return v

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        return self.logprobs


# Parameters of OpenAI's API (and vLLM's sampling extensions) that this server does not
# implement: a request that sets one to anything but the value that changes nothing gets a 400
# naming it, rather than an answer that silently ignores what was asked.
_Neutral = dict[str, tuple[Any, ...]]  # parameter -> the values that change nothing
_COMPLETION_ONLY: _Neutral = {"echo": (False,), "best_of": (1,), "suffix": ("",)}
_CHAT_ONLY: _Neutral = {
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
}
_EXTENSIONS: _Neutral = {
    "top_k": (-1, 0),
    "min_p": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "use_beam_search": (False,),
}
UNSUPPORTED: dict[str, _Neutral] = {
    "completions": {**_COMPLETION_ONLY, **_EXTENSIONS},
    "chat": {**_CHAT_ONLY, **_EXTENSIONS},
}


def check_supported(body: dict[str, Any], endpoint: str) -> None:
    """400 for the first parameter of `body` this server does not implement (see above); null
    and the neutral values pass."""
    for name, neutral in UNSUPPORTED[endpoint].items():
        value = body.get(name)
        if value is None or any(type(value) is type(v) and value == v for v in neutral):
            continue
        message = f"{name} is not supported by this server"
        raise ApiError(400, message, _INVALID, name, "unsupported_parameter")


def validation_error(e: ValidationError) -> ApiError:
    """The 400 for a request body pydantic refused: `param` is the path of the offending field
    (for a union field, the field, not the member type pydantic tried last)."""
    errors = e.errors()
    first = errors[0]
    # a union field fails once per member, each error's path ending in that member's type
    common = tuple(first["loc"])
    for err in errors[1:]:
        loc = tuple(err["loc"])
        if loc[:1] == common[:1]:
            n = 0
            while n < min(len(common), len(loc)) and common[n] == loc[n]:
                n += 1
            common = common[:n]
    param = ".".join(str(p) for p in common) or None
    return ApiError(400, f"{param}: {first['msg']}", _INVALID, param)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def internal_error(request_id: str) -> ApiError:
    """What a client is told of a bug or a failed stage: nothing but where to look in the log."""
    message = f"The server had an error while processing your request (request id {request_id})"
    return ApiError(500, message, "server_error", None, "internal_error")


def model_entry(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "e2llm"}


def chat_response(
    rid: str, model: str, text: str, finish: str | None, use: dict[str, int], logprobs: Any = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": logprobs,
            }
        ],
        "usage": use,
    }


def completion_response(
    rid: str, model: str, text: str, finish: str | None, use: dict[str, int], logprobs: Any = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
        "usage": use,
    }


def chat_chunk(
    rid: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None,
    use: dict[str, int] | None = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
    }
    if use is not None:
        chunk["choices"] = []
        chunk["usage"] = use
    return chunk


def completion_chunk(
    rid: str,
    model: str,
    text: str,
    finish: str | None,
    use: dict[str, int] | None = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
    }
    if use is not None:
        chunk["choices"] = []
        chunk["usage"] = use
    return chunk

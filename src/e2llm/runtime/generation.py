"""One request's life in the serving layer: token ids in, text deltas and a finish reason out.

`TextStream` turns generated token ids into text that is safe to send (no half UTF-8
character, nothing that may still become a stop string). `Generation` adds the request's limits
(EOS, `max_tokens`, `min_tokens`), its timestamps and the queue its HTTP handler reads. Both are
plain Python, free of Ray and torch.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from e2llm.runtime.draw import TokenDraw, TokenLogprob
from e2llm.runtime.text import IncrementalDetokenizer, StopStrings

_ids = itertools.count()


class TextStream:
    """Generated token ids -> text safe to send: incremental detokenising, then stop strings
    (OpenAI semantics: the text ends before the stop string, which is not sent)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stops = StopStrings(stop)

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (text now safe to send, whether a stop string was hit)."""
        return self._stops.push(self._detok.push(token_id))

    def flush(self) -> str:
        """The held-back tail at the end of a generation that hit no stop string."""
        return self._stops.flush()


@dataclass(frozen=True)
class TokenEvent:
    """What the HTTP handler receives: a text delta, and the finish reason on the last event.

    `error` is what the client may be told: for a 500 (a bug, a stage that failed) the handler
    shows a generic message with the request id instead, and the details are in the server log.
    """

    text: str
    token_id: int | None = None
    finish_reason: str | None = None  # "stop" | "length" | "error"
    error: str | None = None
    status: int = 500  # HTTP status of an error: 503 when no live replica could serve it
    logprob: TokenLogprob | None = None  # of `token_id`, when the request asked for logprobs


@dataclass(eq=False)
class Generation:
    """A request in flight. Owned by the serving loop; the HTTP handler only reads `events`
    and may call `cancel()` (client gone): the loop then drops it and frees its KV."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    eos_ids: frozenset[int]
    text: TextStream
    min_tokens: int = 0  # EOS cannot be sampled before this many tokens (benchmarks)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; k: each token's and the k likeliest
    seq_id: str = field(default_factory=lambda: f"seq-{next(_ids)}")  # the request id, in logs
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    counts: collections.Counter[int] = field(default_factory=collections.Counter)  # of `generated`
    finish_reason: str | None = None
    cancelled: bool = False
    arrival_s: float = field(default_factory=time.monotonic)
    prefill_start_s: float | None = None
    first_token_s: float | None = None
    queued_for_decode_s: float | None = None
    decode_start_s: float | None = None
    finished_s: float | None = None
    handoff_s: float | None = None  # PREFILL -> DECODER KV transfer time (None: co-located)
    handoff_bytes: int = 0
    migrations: int = 0  # times re-prefilled elsewhere after losing its replica

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    @property
    def context_len(self) -> int:
        """Tokens whose KV the sequence holds once its last generated token has been fed back."""
        return len(self.prompt_ids) + len(self.generated)

    @property
    def context_ids(self) -> list[int]:
        """What a (re-)prefill runs: the prompt plus every token generated so far. On a fresh
        request that is the prompt; after a replica loss it rebuilds the KV elsewhere, and the
        token it yields is the next one, so the stream goes on without repeating a token."""
        return self.prompt_ids + self.generated

    @property
    def max_context_len(self) -> int:
        return len(self.prompt_ids) + self.max_tokens

    @property
    def waiting_s(self) -> float:
        """Queued and not served: arrival -> prefill start, plus decode queue -> admission."""
        wait = (self.prefill_start_s or self.arrival_s) - self.arrival_s
        if self.queued_for_decode_s is not None and self.decode_start_s is not None:
            wait += self.decode_start_s - self.queued_for_decode_s
        return wait

    def draw(self) -> TokenDraw:
        """What the last stage needs to pick this sequence's next token. The step makes a seeded
        draw reproducible wherever it is taken; the counts of the tokens so far (for penalties)
        go along only when a penalty is set."""
        step = len(self.generated)
        penalised = self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        return TokenDraw(
            self.temperature,
            self.top_p,
            self.seed,
            step,
            self.ignore_eos or step < self.min_tokens,
            self.presence_penalty,
            self.frequency_penalty,
            self.logit_bias,
            tuple(self.counts.items()) if penalised else (),
            self.top_logprobs,
        )

    def add_token(self, token_id: int, logprob: TokenLogprob | None = None) -> None:
        """Record one generated token and publish its text; sets `finish_reason` at the end."""
        if self.done:
            return
        now = time.monotonic()
        if self.first_token_s is None:
            self.first_token_s = now
        self.generated.append(token_id)
        self.counts[token_id] += 1
        if token_id in self.eos_ids and not self.ignore_eos:
            self._finish("stop", self.text.flush(), now)
            return
        delta, stopped = self.text.push(token_id)
        if stopped:
            self._finish("stop", delta, now, token_id, logprob)
        elif len(self.generated) >= self.max_tokens:
            self._finish("length", delta + self.text.flush(), now, token_id, logprob)
        else:
            self.events.put_nowait(TokenEvent(delta, token_id, logprob=logprob))

    def fail(self, message: str, status: int = 500) -> None:
        if not self.done:
            self.finish_reason = "error"
            self.finished_s = time.monotonic()
            self.events.put_nowait(TokenEvent("", None, "error", message, status))

    def cancel(self) -> None:
        self.cancelled = True

    def _finish(
        self,
        reason: str,
        text: str,
        now: float,
        token_id: int | None = None,
        logprob: TokenLogprob | None = None,
    ) -> None:
        self.finish_reason = reason
        self.finished_s = now
        self.events.put_nowait(TokenEvent(text, token_id, reason, logprob=logprob))

    def timings(self) -> dict[str, Any]:
        """Per-request figures (seconds) for logs and response headers."""
        ttft = None if self.first_token_s is None else self.first_token_s - self.arrival_s
        return {"waiting_s": self.waiting_s, "ttft_s": ttft, "output_tokens": len(self.generated)}

"""Prompts in, streamed text out: chat templates, incremental detokenising and stop strings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from e2llm.errors import InputError


def _ids(encoded: Any) -> list[int]:
    """transformers 5 returns a BatchEncoding from apply_chat_template; older versions a list."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of a chat prompt, ending with the assistant turn's opening (generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("messages", "this model's tokenizer has no chat template; use /v1/completions")
    try:
        encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    except (jinja2.TemplateError, ValueError) as err:
        # how a template refuses messages (its raise_exception, an undefined value) and how
        # transformers does (a message without role or content); anything else is a bug
        raise InputError("messages", f"chat template failed: {err}") from err
    return _ids(encoded)


def max_token_chars(tokenizer: Any) -> int | None:
    """The most characters one token stands for (each decoded alone), or None where that does
    not bound a prompt's tokens from below (the tokenizer normalises text before splitting it).
    A text of `n` characters then has at least `n / max_token_chars` tokens, so a prompt far
    longer than the context can be refused without tokenising it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    return max(len(tokenizer.decode([i], skip_special_tokens=False)) for i in range(len(tokenizer)))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a plain completion prompt (the tokenizer's own special-token convention)."""
    return _ids(tokenizer(text))


class IncrementalDetokenizer:
    """Turns generated token ids into text deltas for streaming.

    Each step decodes a short window (previous token(s) + new ones) rather than the whole output,
    and holds text back while it ends in an incomplete UTF-8 character (U+FFFD), so a multi-byte
    character split over tokens is emitted once, whole. The concatenated deltas equal decoding
    all tokens at once.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.tokens: list[int] = []
        self._prefix = 0  # window start (kept one token back for context-dependent spacing)
        self._read = 0  # tokens already turned into emitted text

    def push(self, token_ids: int | Sequence[int]) -> str:
        """Add tokens; return the newly complete text (possibly empty)."""
        self.tokens.extend([token_ids] if isinstance(token_ids, int) else token_ids)
        decode = self._tok.decode
        before = decode(self.tokens[self._prefix : self._read], skip_special_tokens=self._skip)
        now = decode(self.tokens[self._prefix :], skip_special_tokens=self._skip)
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return now[len(before) :]


class StopStrings:
    """Finds stop strings in streamed text, holding back a tail that could start one.

    `push(delta)` returns (text safe to emit, stopped). Once stopped, the emitted text ends just
    before the stop string (OpenAI semantics: the stop string is not returned).
    """

    def __init__(self, stop: Sequence[str]):
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._pending = ""
        self.stopped = False

    def push(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        self._pending += delta
        hits = [i for i in (self._pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        cut = len(self._pending) - self._hold
        if cut <= 0:
            return "", False
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        """The held-back tail, at the end of generation without a stop."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

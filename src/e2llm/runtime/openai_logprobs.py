"""OpenAI's two logprobs shapes, from the (token id, `TokenLogprob`) pairs a generation produced.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`.
Completions: `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`.
A token's text is the tokenizer's decoding of that token alone (a token holding part of a UTF-8
character shows as U+FFFD there, as in vLLM). In a stream each token's entry comes once, in the
first chunk sent after it; `text_offset` counts from the start of the completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from e2llm.runtime.draw import TokenLogprob

Entry = tuple[int, TokenLogprob]


class Logprobs:
    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.offset = 0  # characters of the completion's tokens formatted so far

    def token(self, token_id: int) -> str:
        return str(self._tok.decode([token_id], skip_special_tokens=False))

    def chat(self, entries: Sequence[Entry]) -> dict[str, Any]:
        def one(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.token(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [
            {**one(t, lp.logprob), "top_logprobs": [one(i, v) for i, v in lp.top]} for t, lp in entries
        ]
        return {"content": content, "refusal": None}

    def completion(self, entries: Sequence[Entry]) -> dict[str, Any]:
        tokens = [self.token(t) for t, _ in entries]
        offsets = []
        for text in tokens:
            offsets.append(self.offset)
            self.offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for _, lp in entries],
            "top_logprobs": [{self.token(i): v for i, v in lp.top} for _, lp in entries],
            "text_offset": offsets,
        }

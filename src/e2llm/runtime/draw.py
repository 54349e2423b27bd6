"""What travels between the serving loop and the stage that picks tokens (plain data, no torch).

The serving loop sends a `TokenDraw` per sequence with each prefill or decode step; the stage
holding the LM head answers with `Picked`: the chosen token ids and, for the sequences that asked
for them, their log probabilities (`TokenLogprob`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenDraw:
    """How to pick one sequence's next token (see `sampling.pick_tokens`).

    `step` is the index of the token being drawn: a seeded draw uses (seed, step), so a request
    gives the same tokens on any stage and in any batch mix. `counts` (generated token id, times)
    is sent only when a penalty is set: it is what the penalties apply to.
    """

    temperature: float
    top_p: float
    seed: int | None
    step: int
    ban_eos: bool  # `min_tokens` not reached yet, or `ignore_eos`
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    counts: tuple[tuple[int, int], ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k likeliest

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.logit_bias) or (bool(self.counts) and self.has_penalty)

    @property
    def has_penalty(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


GREEDY = TokenDraw(0.0, 1.0, None, 0, False)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log probability of a chosen token under the model (before temperature, penalties and
    bias, as vLLM reports it by default) and the `k` likeliest tokens with theirs."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Picked:
    """One step's choice for a batch: a token id per row, and its `TokenLogprob` where asked."""

    tokens: tuple[int, ...]
    logprobs: tuple[TokenLogprob | None, ...]

    @classmethod
    def of(cls, tokens: Sequence[int], logprobs: Sequence[TokenLogprob | None] | None = None) -> Picked:
        return cls(tuple(int(t) for t in tokens), tuple(logprobs or [None] * len(tokens)))

    def row(self, i: int) -> Chosen:
        return self.tokens[i], self.logprobs[i]


Chosen = tuple[int, TokenLogprob | None]  # one sequence's token, with its logprob where asked

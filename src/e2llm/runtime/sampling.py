"""Choosing the next token: greedy, temperature and top-p, seeded per request; OpenAI's logit bias
and presence/frequency penalties; log probabilities of the chosen and the likeliest tokens.

`sample` draws from logits with `SamplingParams` (the single-process engine uses it directly);
`pick_tokens` is what the stage holding the LM head runs for a batch of `TokenDraw`s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from e2llm.errors import InputError
from e2llm.runtime.draw import Picked, TokenDraw, TokenLogprob


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request generates. `temperature == 0` is greedy (argmax; seed and top_p unused).

    Generation ends at `max_tokens` new tokens, at an EOS token (unless `ignore_eos`, or fewer than
    `min_tokens` tokens were generated), or when the text contains one of `stop`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError("temperature", "must be a finite number >= 0", self.temperature)
        if not 0 < self.top_p <= 1:
            raise InputError("top_p", "must be in (0, 1]", self.top_p)
        if self.max_tokens <= 0:
            raise InputError("max_tokens", "must be > 0", self.max_tokens)
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InputError("min_tokens", "must be in [0, max_tokens]", self.min_tokens)
        if any(not s for s in self.stop):
            raise InputError("stop", "stop strings must be non-empty", self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def bans_eos(self, n_generated: int) -> bool:
        """Whether EOS must not be sampled as token number `n_generated` (0-based)."""
        return self.ignore_eos or n_generated < self.min_tokens


def new_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A request's own random stream: reproducible with a seed, fresh entropy without one."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    banned: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """One token id per row of `logits` [B, vocab] (fp32), row b drawn with `params[b]` and
    `generators[b]` (None only for greedy rows). `banned[b]` token ids get zero probability
    (EOS while `min_tokens` is not reached)."""
    logits = logits.float()
    if banned is not None and any(banned):
        logits = logits.clone()
        for b, ids in enumerate(banned):
            if ids:
                logits[b, list(ids)] = -math.inf
    greedy_ids = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    for b, p in enumerate(params):
        if p.greedy:
            out.append(int(greedy_ids[b]))
            continue
        probs = torch.softmax(logits[b] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            probs = _top_p(probs, p.top_p)
        gen = generators[b]
        if gen is None:
            raise ValueError("a sampled (temperature > 0) row needs a generator")
        out.append(int(torch.multinomial(probs, 1, generator=gen).item()))
    return out


def _top_p(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (the top token always)."""
    sorted_p, order = probs.sort(descending=True)
    mass_before = sorted_p.cumsum(0) - sorted_p
    sorted_p = torch.where(mass_before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return kept / kept.sum()


def pick_tokens(logits: Tensor, draws: Sequence[TokenDraw], eos_ids: Sequence[int]) -> Picked:
    """Next token per row of `logits` ([batch, vocab]), row b drawn as `draws[b]` says.

    Order (as OpenAI and vLLM): the logit bias and the penalties adjust the model's logits, EOS
    is banned where `ban_eos`, then greedy or temperature + top-p. A seeded row draws from a
    generator seeded by (seed, step), so a request gives the same tokens on any stage and in any
    batch mix (the prefill replica samples the first token, a decoder the rest). Log probabilities
    are of the model's own distribution (before any of that), for the rows that ask."""
    raw = logits.float().cpu()  # the generators are CPU generators, and [batch, vocab] is small
    adjusted = adjust_logits(raw, draws)
    params = [SamplingParams(temperature=d.temperature, top_p=d.top_p) for d in draws]
    generators = [
        None if d.temperature == 0 else new_generator(None if d.seed is None else _step_seed(d.seed, d.step))
        for d in draws
    ]
    banned = [list(eos_ids) if d.ban_eos else [] for d in draws]
    tokens = sample(adjusted, params, generators, banned)
    if all(d.top_logprobs is None for d in draws):
        return Picked.of(tokens)
    return Picked.of(tokens, token_logprobs(raw, tokens, [d.top_logprobs for d in draws]))


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 2**63


def adjust_logits(logits: Tensor, draws: Sequence[TokenDraw]) -> Tensor:
    """`logits` with each row's logit bias added and its penalties subtracted (OpenAI's formula:
    `frequency_penalty * count + presence_penalty * (count > 0)` for each token generated so far).
    Rows that adjust nothing are left as they are; `logits` itself is never modified."""
    rows = [b for b, d in enumerate(draws) if d.adjusts_logits]
    if not rows:
        return logits
    out = logits.clone()
    for b in rows:
        d = draws[b]
        if d.logit_bias:
            ids, bias = zip(*d.logit_bias, strict=True)
            out[b, list(ids)] += torch.tensor(bias, dtype=out.dtype)
        if d.counts and d.has_penalty:
            ids, counts = zip(*d.counts, strict=True)
            n = torch.tensor(counts, dtype=out.dtype)
            out[b, list(ids)] -= d.frequency_penalty * n + d.presence_penalty * (n > 0).to(out.dtype)
    return out


def token_logprobs(
    logits: Tensor, chosen: Sequence[int], top: Sequence[int | None]
) -> list[TokenLogprob | None]:
    """For each row whose `top[b]` is set: log-softmax of the row, the chosen token's value and
    the `top[b]` likeliest tokens, likeliest first."""
    out: list[TokenLogprob | None] = []
    for b, k in enumerate(top):
        if k is None:
            out.append(None)
            continue
        lp = torch.log_softmax(logits[b].double(), dim=-1)
        values, ids = torch.topk(lp, k)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        out.append(TokenLogprob(float(lp[chosen[b]]), best))
    return out

"""Sampling (greedy, temperature, top-p, seeds, banned EOS, logit bias, penalties, logprobs) and
stop-string streaming."""

from __future__ import annotations

import pytest
import torch

from e2llm.errors import InputError
from e2llm.runtime.draw import TokenDraw
from e2llm.runtime.sampling import SamplingParams, adjust_logits, new_generator, pick_tokens, sample
from e2llm.runtime.text import StopStrings


def test_greedy_is_argmax_and_ignores_generators() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]])
    greedy = SamplingParams(temperature=0)
    assert sample(logits, [greedy, greedy], [None, None]) == [1, 0]


def test_banned_tokens_are_never_chosen() -> None:
    logits = torch.tensor([[0.0, 9.0, 1.0]])
    assert sample(logits, [SamplingParams(temperature=0)], [None], banned=[[1]]) == [2]
    hot = SamplingParams(temperature=5.0, seed=0)
    gen = new_generator(0)
    draws = [sample(logits, [hot], [gen], banned=[[1]])[0] for _ in range(200)]
    assert 1 not in draws and set(draws) == {0, 2}


def test_seed_reproduces_and_differs() -> None:
    logits = torch.zeros(1, 50)
    params = SamplingParams(temperature=1.0, seed=7)

    def draw(seed: int) -> list[int]:
        gen = new_generator(seed)
        return [sample(logits, [params], [gen])[0] for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_temperature_sampling_follows_softmax() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    params = SamplingParams(temperature=1.0)
    gen = new_generator(123)
    counts = torch.bincount(
        torch.tensor([sample(logits, [params], [gen])[0] for _ in range(3000)]), minlength=3
    )
    freq = counts.float() / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.04, rtol=0)


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.25, 0.1, 0.05]]))
    gen = new_generator(1)
    tight = SamplingParams(temperature=1.0, top_p=0.5)
    assert {sample(logits, [tight], [gen])[0] for _ in range(100)} == {0}
    mid = SamplingParams(temperature=1.0, top_p=0.8)  # 0.6 + 0.25 reaches 0.8
    assert {sample(logits, [mid], [gen])[0] for _ in range(300)} == {0, 1}


def test_rows_use_their_own_params() -> None:
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    rows = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_p=0.01)]
    assert sample(logits, rows, [None, new_generator(0)]) == [1, 1]
    with pytest.raises(ValueError, match="generator"):
        sample(logits, [SamplingParams(temperature=1.0)] * 2, [None, None])


def test_min_tokens_and_ignore_eos_ban_eos() -> None:
    params = SamplingParams(temperature=0, max_tokens=5, min_tokens=2)
    assert [params.bans_eos(n) for n in range(4)] == [True, True, False, False]
    assert SamplingParams(ignore_eos=True).bans_eos(100)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_sampling_params(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        SamplingParams(**kwargs)


def test_stop_strings_across_deltas() -> None:
    stops = StopStrings(["END", "##"])
    emitted = []
    for delta in ["Hello E", "N", "o", " wor", "ld E", "ND more"]:
        text, stopped = stops.push(delta)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "Hello ENo world "
    assert stops.stopped and stops.push("x") == ("", True) and stops.flush() == ""


def test_stop_strings_flush_the_tail_without_a_stop() -> None:
    stops = StopStrings(["STOP"])
    assert stops.push("abcST") == ("ab", False)  # "cST" might start "STOP"
    assert stops.flush() == "cST"
    assert StopStrings([]).push("abc") == ("abc", False)


# ---- logit bias, presence/frequency penalties, logprobs (what the LM-head stage runs) ----------
def _draw(**kw: object) -> TokenDraw:
    return TokenDraw(**{"temperature": 0.0, "top_p": 1.0, "seed": None, "step": 0, "ban_eos": False, **kw})  # type: ignore[arg-type]


def test_logit_bias_moves_and_bans_tokens() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0]])
    assert pick_tokens(logits, [_draw()], []).tokens == (1,)
    assert pick_tokens(logits, [_draw(logit_bias=((1, -100.0),))], []).tokens == (2,)
    assert pick_tokens(logits, [_draw(logit_bias=((3, 100.0),))], []).tokens == (3,)
    hot = _draw(temperature=1.0, seed=3, logit_bias=((1, -100.0), (2, -100.0), (3, -100.0)))
    assert {pick_tokens(logits, [hot], []).tokens[0] for _ in range(20)} == {0}


def test_penalties_follow_openais_formula_on_the_tokens_generated_so_far() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0], [1.0, 5.0, 2.0, 0.0]])
    counts = ((1, 3), (2, 1))
    draws = [_draw(frequency_penalty=0.5, presence_penalty=1.0, counts=counts), _draw()]
    out = adjust_logits(logits, draws)
    expected = torch.tensor([[1.0, 5.0 - 0.5 * 3 - 1.0, 2.0 - 0.5 - 1.0, 0.0], [1.0, 5.0, 2.0, 0.0]])
    torch.testing.assert_close(out, expected)
    assert logits[0, 1] == 5.0  # the caller's logits are not modified
    assert pick_tokens(logits, draws, []).tokens == (1, 1)  # 2.5 still beats 1.0
    strong = _draw(frequency_penalty=2.0, counts=((1, 3),))  # 5 - 6 < 2: the repeat loses
    assert pick_tokens(logits[:1], [strong], []).tokens == (2,)
    eager = _draw(presence_penalty=-2.0, counts=((2, 1),))  # a negative penalty favours repeats
    assert adjust_logits(logits[:1], [eager])[0, 2] == 4.0
    assert adjust_logits(logits, [_draw(), _draw()]) is logits  # nothing to adjust: no copy


def test_logprobs_are_the_models_own_with_the_likeliest_first() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    draws = [_draw(top_logprobs=2, logit_bias=((2, 50.0),)), _draw()]
    picked = pick_tokens(logits, draws, [])
    assert picked.tokens == (2, 2) and picked.logprobs[1] is None
    lp = picked.logprobs[0]
    assert lp is not None
    raw = torch.log_softmax(logits[0].double(), -1)
    assert lp.logprob == pytest.approx(float(raw[2]))  # before the bias that chose it
    assert [i for i, _ in lp.top] == [1, 2]
    assert [v for _, v in lp.top] == pytest.approx([float(raw[1]), float(raw[2])])
    none = pick_tokens(logits, [_draw(top_logprobs=0)] * 2, []).logprobs
    assert all(x is not None and x.top == () for x in none)


def test_generation_sends_counts_only_with_a_penalty() -> None:
    from e2llm.runtime.generation import Generation, TextStream

    class Chars:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(map(chr, ids))

    def gen(**kw: object) -> Generation:
        return Generation([1], 10, 0.0, 1.0, None, frozenset(), TextStream(Chars()), **kw)  # type: ignore[arg-type]

    plain, penalised = gen(), gen(frequency_penalty=0.5, logit_bias=((7, 1.0),), top_logprobs=3)
    for g in (plain, penalised):
        for t in (65, 66, 65):
            g.add_token(t)
    assert plain.draw().counts == () and plain.draw().top_logprobs is None
    d = penalised.draw()
    assert dict(d.counts) == {65: 2, 66: 1} and d.logit_bias == ((7, 1.0),) and d.top_logprobs == 3
    assert d.step == 3

"""Sampling (greedy, temperature, top-p, seeds, banned EOS) and stop-string streaming."""

from __future__ import annotations

import pytest
import torch

from e2llm.errors import InputError
from e2llm.runtime.sampling import SamplingParams, new_generator, sample
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

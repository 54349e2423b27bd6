"""The timed calls and the sweep, on a tiny layer shape (fast)."""

from __future__ import annotations

import time

import pytest
import torch

from e2llm.profile.measure import ProfileGrid, grid_points, measure
from e2llm.profile.target import LayerStack, spread_lengths
from e2llm.profile.timing import time_calls
from e2llm.specs.model_spec import ModelSpec

TINY = ModelSpec(
    name="tiny",
    n_layers=4,
    hidden=64,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    intermediate=128,
    vocab=512,
    max_context=256,
)
CPU = torch.device("cpu")


def test_time_calls_stops_at_the_budget_but_not_below_min_repeats() -> None:
    times = time_calls(lambda: time.sleep(0.02), CPU, repeats=50, warmup=0, budget_s=0.05, min_repeats=3)
    assert len(times) == 3 and all(t >= 0.02 for t in times)
    assert len(time_calls(lambda: None, CPU, repeats=7, warmup=1)) == 7
    with pytest.raises(ValueError):
        time_calls(lambda: None, CPU, repeats=0, warmup=0)


def test_decode_step_keeps_the_context_fixed() -> None:
    stack = LayerStack(TINY, 2, CPU, torch.float32)
    step = stack.decode_fn(3, 40)
    for _ in range(5):
        step()
    lengths = [stack.layers.seq_len(s) for s in stack._live]
    assert lengths == spread_lengths(3, 40) == [30, 40, 50]
    stack.prefill_fn(8)()  # the previous point's sequences are freed, the prompt's too
    assert stack.layers.kv_bytes() == 0


def test_spread_lengths_keep_the_mean() -> None:
    assert spread_lengths(1, 128) == [128]
    for batch, context in ((2, 128), (5, 100), (16, 2048)):
        lengths = spread_lengths(batch, context)
        assert len(lengths) == batch and sum(lengths) == batch * context
        assert min(lengths) >= context * 0.75 - 1 and max(lengths) <= context * 1.25 + 1


def test_sweep_covers_the_grid_and_skips_contexts_beyond_the_model() -> None:
    grid = ProfileGrid(
        prefill_tokens=(8, 32, 512),  # 512 > max_context 256: skipped
        decode_batches=(1, 2),
        decode_contexts=(16, 64, 220),  # 220 (+25%) > max_context 256: skipped
        head_tokens=(1, 2),
        embed_tokens=(1,),
        rounds=2,
        repeats=2,
        warmup=0,
    )
    calls: list[str] = []
    samples = measure(TINY, CPU, torch.float32, grid, lambda done, total, note="": calls.append(note))
    assert [t for t, _ in samples.prefill] == [8, 32]
    assert {(b, c) for b, c, _ in samples.decode} == {(1, 16), (2, 16), (1, 64), (2, 64)}
    assert len(calls) == grid_points(grid, TINY) == 2 * (2 + 4 + 2 + 1)
    assert all(s > 0 for *_, s in (*samples.prefill, *samples.decode, *samples.head, *samples.embed))

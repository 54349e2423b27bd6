"""The per-stage KV pool: slots and capacity grow by doubling without losing entries, and a
sliding-window layer keeps only its window (a ring) through decode, chunks and hand-offs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e2llm.runtime.kv import KVCache

CPU = torch.device("cpu")


def fill(cache: KVCache, seq_id: str, n: int, value: float, chunk: int | None = None) -> None:
    """Append n tokens whose K entries are value + position (V = -K) to every layer, in steps of
    `chunk` tokens (default: one step)."""
    chunk = chunk or n
    for first in range(0, n, chunk):
        t = min(chunk, n - first)
        step = cache.step([seq_id], t)
        k = (value + step.positions[0].float())[:, None, None].expand(t, cache.n_kv_heads, cache.head_dim)
        kv = torch.cat((k, -k), 1).reshape(t, -1)
        for layer in cache.layers:
            step.update(layer, kv)
        cache.advance(seq_id, t)


def test_growth_keeps_every_sequence_intact() -> None:
    cache = KVCache([4, 5], n_kv_heads=2, head_dim=3, dtype=torch.float32, device=CPU)
    for i in range(5):  # more sequences than the initial slots
        cache.allocate(f"s{i}")
        fill(cache, f"s{i}", 10 * (i + 1), 1000.0 * i)
    fill(cache, "s0", 300, 0.0)  # beyond the initial capacity: grows by doubling
    assert cache.capacity == 512 and cache.slots == 8
    for i in range(5):
        kv = cache.export(f"s{i}")
        assert sorted(kv) == [4, 5]
        n = cache.length(f"s{i}")
        k, v = kv[5]
        assert k.shape == (2, n, 3)
        expected = 1000.0 * i + np.arange(n, dtype=np.float32)
        if i == 0:
            expected = np.concatenate([expected[:10], np.arange(10, n, dtype=np.float32)])
        np.testing.assert_array_equal(k[0, :, 0], expected)
        np.testing.assert_array_equal(v, -k)
    assert cache.used_bytes() == 2 * 2 * 2 * 3 * 4 * sum(cache.length(f"s{i}") for i in range(5))


def _reads_views(cache: KVCache, seq_ids: list[str]) -> bool:
    """Whether a decode step over `seq_ids` attends to the pool itself (views, no gather)."""
    step = cache.step(seq_ids, 1)
    kv = torch.zeros(len(seq_ids), 2 * cache.n_kv_heads * cache.head_dim)
    keys = step.update(cache.layers[0], kv)[0]
    pool = cache.step(seq_ids[:1], 1).update(cache.layers[0], kv[:1])[0]  # one row: always a view
    return keys.untyped_storage().data_ptr() == pool.untyped_storage().data_ptr()


def test_freed_slots_are_reused_lowest_first_and_batches_use_views() -> None:
    cache = KVCache([0], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=CPU)
    for name in "abc":
        cache.allocate(name)
    assert _reads_views(cache, ["a", "b", "c"])
    assert not _reads_views(cache, ["c", "a"])  # gather path
    cache.free("b")
    cache.free("unknown")  # no-op
    cache.allocate("d")
    assert _reads_views(cache, ["a", "d"])  # d took b's slot, between a and c
    with pytest.raises(ValueError, match="already"):
        cache.allocate("d")


def test_import_copies_read_only_arrays_and_checks_shapes() -> None:
    cache = KVCache([2, 3], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=CPU)
    k = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    k.setflags(write=False)  # as arrays arrive from Ray's object store
    assert cache.import_("s", {3: (k, k), 7: (k, k)}, 3) == [3]
    assert cache.missing_layers("s") == [2]
    np.testing.assert_array_equal(cache.export("s")[3][0], k)
    with pytest.raises(ValueError, match="shape"):
        cache.import_("s", {2: (k[:, :, :1], k[:, :, :1])}, 3)
    with pytest.raises(ValueError, match="positions"):
        cache.import_("s", {2: (k[:, :2], k[:, :2])}, 3)


@pytest.mark.parametrize("chunk", [1, 3, 7, 40])
def test_a_sliding_layer_keeps_its_window_in_position_order(chunk: int) -> None:
    """Window 5 beside a full layer: after 23 tokens (in steps of `chunk`) the sliding layer holds
    positions 18..22 and nothing more, exported in order; the full layer holds all 23."""
    cache = KVCache([0, 1], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=CPU, windows={1: 5})
    cache.allocate("s")
    fill(cache, "s", 23, 0.0, chunk)
    kv = cache.export("s")
    np.testing.assert_array_equal(kv[0][0][0, :, 0], np.arange(23))
    np.testing.assert_array_equal(kv[1][0][0, :, 0], np.arange(18, 23))
    np.testing.assert_array_equal(kv[1][1], -kv[1][0])
    per_position = 2 * 1 * 2 * 4
    assert cache.used_bytes() == per_position * (23 + 5)
    assert cache.reserved_bytes() == per_position * cache.slots * (cache.capacity + 5)


def test_a_window_hands_off_and_reserves_at_most_the_window() -> None:
    src = KVCache([0, 1], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=CPU, windows={1: 5})
    src.allocate("s")
    fill(src, "s", 12, 100.0, chunk=4)
    dst = KVCache([1], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=CPU, windows={1: 5})
    exported = src.export("s")
    assert dst.import_("s", exported, 12) == [1]
    np.testing.assert_array_equal(dst.export("s")[1][0], exported[1][0])
    # a sender that kept every position (longer arrays): the window is their tail
    full = np.arange(24, dtype=np.float32).reshape(1, 12, 2)
    other = KVCache([1], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=CPU, windows={1: 5})
    other.import_("s", {1: (full, -full)}, 12)
    np.testing.assert_array_equal(other.export("s")[1][0], full[:, 7:])
    other.reserve(4, 1000)
    assert other.reserved_bytes() == 4 * 5 * 2 * 2 * 4  # 4 slots x the window, K and V

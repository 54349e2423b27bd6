"""The per-stage KV pool: slots and capacity grow by doubling without losing entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e2llm.runtime.kv import KVCache


def fill(cache: KVCache, seq_id: str, n: int, value: float) -> None:
    """Append n tokens whose K entries are value + position (V = -K) to every layer."""
    start = cache.length(seq_id)
    batch = cache.batch([seq_id], start + n)
    positions = torch.arange(start, start + n)[None]
    k = (value + positions.float())[..., None, None].expand(1, n, cache.n_kv_heads, cache.head_dim)
    for layer in cache.layers:
        cache.update(layer, batch, positions, k, -k)
    cache.advance(seq_id, n)


def test_growth_keeps_every_sequence_intact() -> None:
    cache = KVCache([4, 5], n_kv_heads=2, head_dim=3, dtype=torch.float32, device=torch.device("cpu"))
    for i in range(5):  # more sequences than the initial slots
        cache.allocate(f"s{i}")
        fill(cache, f"s{i}", 10 * (i + 1), 1000.0 * i)
    fill(cache, "s0", 300, 0.0)  # beyond the initial capacity: grows by doubling
    assert cache.k.shape[3] == 512 and cache.k.shape[1] == 8
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


def test_freed_slots_are_reused_lowest_first_and_batches_use_views() -> None:
    cache = KVCache([0], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))
    for name in "abc":
        cache.allocate(name)
    assert cache.batch(["a", "b", "c"], 4).span == slice(0, 3)
    assert cache.batch(["c", "a"], 4).span is None  # gather path
    cache.free("b")
    cache.free("unknown")  # no-op
    cache.allocate("d")
    assert cache.batch(["a", "d"], 4).span == slice(0, 2)
    with pytest.raises(ValueError, match="already"):
        cache.allocate("d")


def test_import_copies_read_only_arrays_and_checks_shapes() -> None:
    cache = KVCache([2, 3], n_kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))
    k = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    k.setflags(write=False)  # as arrays arrive from Ray's object store
    assert cache.import_("s", {3: (k, k), 7: (k, k)}, 3) == [3]
    assert cache.missing_layers("s") == [2]
    np.testing.assert_array_equal(cache.export("s")[3][0], k)
    with pytest.raises(ValueError, match="shape"):
        cache.import_("s", {2: (k[:, :2], k[:, :2])}, 3)

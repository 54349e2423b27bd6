"""Achievable memory bandwidth of a device: the rate of one large tensor copy.

A copy reads and writes every byte once, so bandwidth = 2 * size / time. The buffer is made far
larger than any cache (default 256 MiB, capped by what the device has free) so the figure is
DRAM/HBM bandwidth, the ceiling of memory-bound decode.
"""

from __future__ import annotations

import torch

from e2llm.profile.timing import median_time_s
from e2llm.specs.units import GB


def memory_bandwidth_gbs(
    device: torch.device, *, size_bytes: int = 256 * 2**20, repeats: int = 5, warmup: int = 1
) -> float:
    """GB/s (1e9 bytes/s) sustained by `dst.copy_(src)` of `size_bytes` fp32 bytes on `device`."""
    n = max(size_bytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_time_s(lambda: dst.copy_(src), device, repeats=repeats, warmup=warmup)
    return 2 * n * 4 / seconds / GB

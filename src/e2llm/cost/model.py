"""The cost model: every question the planner and the simulator ask about time and memory.

Two timing sources sit behind the `DeviceTimes` protocol: a roofline estimate from device specs
(`cost/roofline.py`) and a fit of measured samples (`cost/profile.py`). `CostModel` combines
one `DeviceTimes` per device with the model shape and the network; neither the planner nor the
simulator can tell which source a device uses.

Units: seconds, bytes, tokens. Layer ranges are half-open `[start, end)`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from e2llm.specs.device import Cluster
from e2llm.specs.model_spec import ModelSpec
from e2llm.specs.units import GIB

# Memory a runtime needs beyond weights and KV on every device: CUDA/Metal context, allocator
# slack, activation buffers. llama.cpp and PyTorch both sit around 0.5-1 GiB; we reserve this much.
RUNTIME_OVERHEAD_BYTES = int(0.75 * GIB)


class DeviceTimes(Protocol):
    """How long one device takes for the pieces of one model. Times are per call, in seconds."""

    def layer_prefill_s(self, tokens: int) -> float:
        """One decoder layer over a prompt of `tokens` tokens into an empty cache."""
        ...

    def layer_decode_s(self, batch: int, context: int) -> float:
        """One decoder layer, one decode step for `batch` sequences of mean context `context`."""
        ...

    def head_s(self, tokens: int) -> float:
        """Final norm + LM head over `tokens` rows (1 row per sequence when decoding)."""
        ...

    def embed_s(self, tokens: int) -> float:
        """Embedding lookup of `tokens` tokens."""
        ...


@dataclass(frozen=True)
class CostModel:
    model: ModelSpec
    cluster: Cluster
    times: Mapping[str, DeviceTimes]  # device name -> its timing source

    # --- time -----------------------------------------------------------------------------
    def stage_prefill_s(
        self, device: str, n_layers: int, tokens: int, *, embedding: bool = False, lm_head: bool = False
    ) -> float:
        """Prefill of one prompt of `tokens` tokens on a stage of `n_layers` layers.
        The LM head runs on the last position only (the first generated token)."""
        t = self.times[device]
        s = n_layers * t.layer_prefill_s(tokens) if n_layers else 0.0
        if embedding:
            s += t.embed_s(tokens)
        if lm_head:
            s += t.head_s(1)
        return s

    def stage_decode_s(
        self,
        device: str,
        n_layers: int,
        batch: int,
        context: int,
        *,
        embedding: bool = False,
        lm_head: bool = False,
    ) -> float:
        """One decode step (one token for each of `batch` sequences) on a stage."""
        t = self.times[device]
        s = n_layers * t.layer_decode_s(batch, context) if n_layers else 0.0
        if embedding:
            s += t.embed_s(batch)
        if lm_head:
            s += t.head_s(batch)
        return s

    def transfer_s(self, a: str, b: str, n_bytes: float) -> float:
        """Seconds to move `n_bytes` from device a to device b on an otherwise idle link."""
        if a == b or n_bytes <= 0:
            return 0.0
        return self.cluster.link(a, b).transfer_s(n_bytes)

    def hop_s(self, a: str, b: str, tokens: int) -> float:
        """Hidden states of `tokens` tokens crossing the pipeline hop a -> b."""
        return self.transfer_s(a, b, self.activation_bytes(tokens))

    # --- bytes ----------------------------------------------------------------------------
    def activation_bytes(self, tokens: int) -> float:
        """Hidden states passed between stages (fp16/bf16 as llama.cpp and our runtime send)."""
        return tokens * self.model.hidden * 2.0

    def kv_bytes(self, start: int, end: int, context: int) -> float:
        """KV cache of one sequence of `context` tokens for layers [start, end)."""
        full, sliding = self._kv_prefix
        b = (full[end] - full[start]) * context
        if self.model.sliding_window:
            b += (sliding[end] - sliding[start]) * min(context, self.model.sliding_window)
        return b

    @cached_property
    def _kv_prefix(self) -> tuple[list[float], list[float]]:
        """Prefix sums over layers of KV bytes per token, split into full-context layers and
        sliding-window layers (`ModelSpec.kv_tokens`), so `kv_bytes` is O(1): the planner and the
        simulator call it in their inner loops."""
        m = self.model
        sliding_layers = set(m.sliding_layers) if m.sliding_window else set()
        full, sliding = [0.0], [0.0]
        for i in range(m.n_layers):
            per_token = m.kv_bytes_per_token(i)
            full.append(full[-1] + (0.0 if i in sliding_layers else per_token))
            sliding.append(sliding[-1] + (per_token if i in sliding_layers else 0.0))
        return full, sliding

    def weight_bytes(self, start: int, end: int, *, embedding: bool = False, lm_head: bool = False) -> float:
        return self.model.stage_weight_bytes(end - start, embedding=embedding, lm_head=lm_head)

    def stage_memory_bytes(
        self,
        start: int,
        end: int,
        *,
        embedding: bool = False,
        lm_head: bool = False,
        sequences: int = 1,
        context: int = 0,
    ) -> float:
        """Weights + KV of `sequences` sequences of `context` tokens + runtime overhead."""
        return (
            self.weight_bytes(start, end, embedding=embedding, lm_head=lm_head)
            + sequences * self.kv_bytes(start, end, context)
            + RUNTIME_OVERHEAD_BYTES
        )

    def max_sequences(
        self,
        device: str,
        start: int,
        end: int,
        context: int,
        *,
        embedding: bool = False,
        lm_head: bool = False,
    ) -> int:
        """How many sequences of `context` tokens `device` can hold KV for beside the weights of
        layers [start, end) and the runtime overhead: 0 if even the weights do not fit, and
        `sys.maxsize` when the stage keeps no KV (no layers, or context 0)."""
        free = self.cluster.device(device).memory_bytes - self.stage_memory_bytes(
            start, end, embedding=embedding, lm_head=lm_head
        )
        if free < 0:
            return 0
        per_sequence = self.kv_bytes(start, end, context)
        return sys.maxsize if per_sequence <= 0 else int(free // per_sequence)

"""The stage-backend interface: what a stage worker needs from the engine that runs its layers.

A backend holds layers [start, end) of one model (plus the embedding and/or the final norm and
LM head), runs prefill and decode on token ids or hidden states, keeps the KV of many sequences,
exports and imports it by layer for the PD hand-off, and reports its memory. The torch
`StageModel` is the first implementation and the test oracle; another engine (ggml, MLX) for a
device class registers a builder in `engine.BACKENDS`, and the workers, the serving loop and the
hand-off stay as they are. Inputs and outputs are torch tensors or numpy arrays: ids `[T]` /
`[B]`, hidden `[T, H]` / `[B, H]`, logits `[vocab]` / `[B, vocab]`; KV as numpy
`[kv_heads, T, head_dim]` per layer (bf16 as its int16 bits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

KVParts = dict[int, tuple[np.ndarray, np.ndarray]]  # absolute layer index -> (K, V)


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Resident bytes of a stage: its weights, the KV of live sequences, and the KV pool reserved."""

    weight_bytes: int
    kv_bytes: int
    kv_reserved_bytes: int
    kv_bytes_per_token: float  # all owned layers, one token (sliding layers counted in full)


class StageBackend(Protocol):
    start: int
    end: int

    @property
    def has_embedding(self) -> bool: ...
    @property
    def has_lm_head(self) -> bool: ...

    def prefill(self, seq_id: str, inputs: Any) -> Any: ...
    def decode(self, seq_ids: Sequence[str], inputs: Any) -> Any: ...
    def export_kv(self, seq_id: str) -> KVParts: ...
    def import_kv(
        self, seq_id: str, kv: Mapping[int, tuple[np.ndarray, np.ndarray]], length: int
    ) -> list[int]: ...
    def missing_layers(self, seq_id: str) -> list[int]: ...
    def seq_len(self, seq_id: str) -> int: ...
    def free(self, seq_id: str) -> None: ...
    def reserve_kv(self, sequences: int, tokens: int) -> None: ...
    def memory(self) -> MemoryReport: ...


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """Everything a backend builder gets: the prepared model directory and the stage's share."""

    model_path: str
    start: int
    end: int
    embedding: bool
    lm_head: bool
    device: str  # resolved torch-style device name: cpu, cuda, mps
    precision: str
    expert_precision: str
    activations: str  # dtype name
    kv: str  # dtype name

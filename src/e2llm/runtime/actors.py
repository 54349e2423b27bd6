"""The stage worker: one Ray actor per (replica, device), running that device's layers.

A worker wraps a `StageModel` (layers `[start, end)`, plus the embedding and/or the final norm and
LM head where the plan puts them) and speaks numpy at its boundary, because Ray moves numpy
arrays zero-copy and pickles torch tensors (runtime-notes). Inputs are token ids on a stage with
the embedding, hidden states otherwise. The stage with the LM head samples the next token itself,
so only token ids — never `[batch, vocab]` logits — travel back to the serving loop.

Each worker keeps the KV cache of the sequences it serves, keyed by sequence id, and can export
a layer range of it (PD hand-off: a prefill stage -> the decoder stage owning those layers) or
import one. It also counts its compute time and bytes moved for `/metrics`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2llm.runtime.backend import KVParts
from e2llm.runtime.cluster import ACTOR_RESOURCE_SHARE, device_resource
from e2llm.runtime.draw import GREEDY, Picked, TokenDraw


@dataclass(frozen=True)
class StageConfig:
    """What a worker builds: layers `[start, end)` of the prepared model at `model_path`."""

    model_path: str
    start: int
    end: int
    embedding: bool
    lm_head: bool
    torch_device: str = "cpu"  # "cpu", "cuda", "mps" or "auto" (resolved on the worker's node)
    dtype: str = "float32"  # activations
    threads: int = 1
    precision: str | None = None  # weights (None: as `dtype`); see `runtime.precision`
    expert_precision: str | None = None
    kv_dtype: str | None = None  # None: as `dtype`
    backend: str = "torch"  # `runtime.backend.BACKENDS`
    kv_reserve: tuple[int, int] = (0, 0)  # (sequences, tokens each) of KV held from the start


def resolve_torch_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class StageWorker:
    """Runs on its device's node; see the module docstring. Methods are called by the serving
    loop in the driver, in order per caller (a Ray actor runs one call at a time)."""

    def __init__(self, config: StageConfig):
        import torch

        from e2llm.runtime.backend import BackendRequest
        from e2llm.runtime.engine import build_backend
        from e2llm.runtime.model import precision_of
        from e2llm.runtime.weights import read_config

        torch.set_num_threads(config.threads)
        self.config = config
        self.device = resolve_torch_device(config.torch_device)
        self.eos_ids = read_config(Path(config.model_path)).eos_token_ids
        precision = config.precision or precision_of(getattr(torch, config.dtype))
        request = BackendRequest(
            model_path=config.model_path,
            start=config.start,
            end=config.end,
            embedding=config.embedding,
            lm_head=config.lm_head,
            device=self.device,
            precision=precision,
            expert_precision=config.expert_precision or precision,
            activations=config.dtype,
            kv=config.kv_dtype or config.dtype,
        )
        self.model = build_backend(config.backend, request)
        self.model.reserve_kv(*config.kv_reserve)
        self.compute_s = {"prefill": 0.0, "decode": 0.0}
        self.calls = {"prefill": 0, "decode": 0}
        self.kv_bytes_in = 0
        self.kv_bytes_out = 0
        self.sequences: set[str] = set()  # ids with KV here

    def info(self) -> dict[str, Any]:
        """Answered once the weights are loaded: the serving loop waits on it before serving."""
        memory = self.model.memory()
        return {
            "device": self.device,
            "threads": self.config.threads,
            "weight_bytes": memory.weight_bytes,
            "kv_bytes_per_token": memory.kv_bytes_per_token,
        }

    def prefill(self, seq_id: str, inputs: np.ndarray, draw: TokenDraw | None = None) -> Any:
        """Run the prompt (ids `[T]` or hidden `[T, H]`) into an empty cache for `seq_id`.
        Returns hidden states `[T, H]`, or on the LM-head stage the first token (`Picked`)."""
        t0 = time.perf_counter()
        self.sequences.add(seq_id)
        out = self.model.prefill(seq_id, inputs)
        result = self._finish(out, [draw] if draw is not None else None)
        self.compute_s["prefill"] += time.perf_counter() - t0
        self.calls["prefill"] += 1
        return result

    def decode(self, seq_ids: list[str], inputs: np.ndarray, draws: list[TokenDraw] | None = None) -> Any:
        """One decode step for a batch: ids `[B]` or hidden `[B, H]` at each sequence's next
        position. Returns hidden `[B, H]`, or the next tokens (`Picked`) on the LM-head stage."""
        t0 = time.perf_counter()
        out = self.model.decode(seq_ids, inputs)
        result = self._finish(out, draws)
        self.compute_s["decode"] += time.perf_counter() - t0
        self.calls["decode"] += 1
        return result

    def mixed(
        self,
        seq_ids: list[str],
        inputs: tuple[np.ndarray | None, list[np.ndarray]],
        draws: list[TokenDraw] | None,
        chunk_ids: list[str],
        chunk_draws: list[TokenDraw | None] | None = None,
    ) -> tuple[Any, list[Any]]:
        """One iteration of a MIXED replica (Sarathi-style): a decode step of `seq_ids` and the
        next prefill chunk of each `chunk_ids` sequence (continuing its cached prefix), in one
        call, so both travel the pipeline together. `inputs` = (decode inputs, chunk inputs) as
        `decode` and `prefill` take them. Returns the same pair of outputs; on the LM-head stage a
        chunk's entry is its sequence's first token (`Picked`) where `chunk_draws` asks for one
        (the prompt's last chunk), else None."""
        decode_in, chunk_in = inputs
        out = self.decode(seq_ids, decode_in, draws) if decode_in is not None else None
        chunks = []
        for seq_id, x, draw in zip(chunk_ids, chunk_in, chunk_draws or [None] * len(chunk_ids), strict=True):
            got = self.prefill(seq_id, x, draw)
            chunks.append(None if self.config.lm_head and draw is None else got)
        return out, chunks

    def export_kv(self, seq_id: str, start: int, end: int) -> KVParts:
        """This stage's K and V of `seq_id` for the layers it holds within `[start, end)`."""
        parts = {
            layer: (np.ascontiguousarray(k), np.ascontiguousarray(v))
            for layer, (k, v) in self.model.export_kv(seq_id).items()
            if start <= layer < end
        }
        self.kv_bytes_out += sum(k.nbytes + v.nbytes for k, v in parts.values())
        return parts

    def import_kv(self, seq_id: str, length: int, *parts: KVParts) -> int:
        """Install the KV of `seq_id` (context `length` tokens) gathered from prefill stages;
        the parts together must cover exactly this stage's layers. Returns bytes received."""
        merged: KVParts = {}
        for part in parts:
            merged.update(part)
        expected = set(range(self.config.start, self.config.end))
        if set(merged) != expected:
            raise ValueError(
                f"KV hand-off for {seq_id} covers layers {sorted(merged)}, need {sorted(expected)}"
            )
        self.sequences.add(seq_id)
        self.model.import_kv(seq_id, merged, length)
        received = sum(k.nbytes + v.nbytes for k, v in merged.values())
        self.kv_bytes_in += received
        return received

    def free(self, seq_ids: list[str]) -> None:
        for seq_id in seq_ids:
            self.model.free(seq_id)
            self.sequences.discard(seq_id)

    def stats(self) -> dict[str, Any]:
        return {
            "compute_s": dict(self.compute_s),
            "calls": dict(self.calls),
            "kv_bytes": self.model.memory().kv_bytes,
            "sequences": len(self.sequences),
            "kv_bytes_in": self.kv_bytes_in,
            "kv_bytes_out": self.kv_bytes_out,
            "pid": os.getpid(),
        }

    def _finish(self, out: Any, draws: Sequence[TokenDraw] | None) -> np.ndarray | Picked:
        if not self.config.lm_head:
            return out.detach().to("cpu").float().numpy()
        from e2llm.runtime.sampling import pick_tokens

        logits = out if out.dim() == 2 else out.unsqueeze(0)
        return pick_tokens(logits, draws or [GREEDY] * logits.shape[0], self.eos_ids)


def spawn_stage_actor(config: StageConfig, device_name: str) -> Any:
    """Start a `StageWorker` pinned to the node advertising `device:<device_name>`.

    It asks Ray for no CPU or GPU: the device resource alone places it, and Ray leaves
    `CUDA_VISIBLE_DEVICES` alone for actors that request no GPU, so the stage sees its node's
    accelerator (emulated devices on one GPU machine share that GPU)."""
    import ray

    return (
        ray.remote(StageWorker)
        .options(
            resources={device_resource(device_name): ACTOR_RESOURCE_SHARE},
            num_cpus=0,
            max_concurrency=1,
        )
        .remote(config)
    )

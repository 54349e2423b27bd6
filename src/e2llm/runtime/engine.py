"""Single-process reference engine: stages chained in one process, and the PD KV hand-off.

`LocalPipeline` runs a model split into stages exactly as the distributed runtime does (same
`StageModel`s, same KV caches), only with direct calls instead of Ray actors. It is the oracle
the Ray runtime is checked against, and the place where prefill->decode hand-off between two
different layer splits is defined (`handoff`).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from e2llm.errors import InputError
from e2llm.runtime.backend import BackendRequest, StageBackend
from e2llm.runtime.model import StageModel
from e2llm.runtime.sampling import SamplingParams, new_generator, sample
from e2llm.runtime.text import IncrementalDetokenizer, StopStrings
from e2llm.runtime.weights import PreparedModel, load_stage_weights


def load_stage(
    prepared: PreparedModel,
    start: int,
    end: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    embedding: bool | None = None,
    lm_head: bool | None = None,
    precision: str | None = None,
    expert_precision: str | None = None,
    kv_dtype: torch.dtype | None = None,
) -> StageModel:
    """Build the stage for layers [start, end) from a prepared model, reading only its tensors.
    By default the first stage embeds and the last one holds the final norm and LM head.
    `precision` (default: that of `dtype`) is how its weights are held; see `StageModel`."""
    n = prepared.config.n_layers
    emb = start == 0 if embedding is None else embedding
    head = end == n if lm_head is None else lm_head
    weights = load_stage_weights(prepared, start, end, emb, head)
    return StageModel(
        prepared.config,
        start,
        end,
        emb,
        head,
        device=device,
        dtype=dtype,
        weights=weights,
        precision=precision,
        expert_precision=expert_precision,
        kv_dtype=kv_dtype,
    )


class LocalPipeline:
    """Stages covering layers [0, n_layers) in order; the first embeds, the last has the LM head."""

    def __init__(self, stages: Sequence[StageModel]):
        if not stages:
            raise InputError("pipeline", "needs at least one stage")
        n = stages[0].config.n_layers
        bounds = [(s.start, s.end) for s in stages]
        if (
            bounds[0][0] != 0
            or bounds[-1][1] != n
            or any(a[1] != b[0] for a, b in itertools.pairwise(bounds))
        ):
            raise InputError("pipeline", f"stages must tile [0, {n}) in order", bounds)
        if not stages[0].has_embedding or not stages[-1].has_lm_head:
            raise InputError("pipeline", "the first stage must embed and the last hold the LM head")
        self.stages = list(stages)
        self.config = stages[0].config

    @staticmethod
    def build(
        prepared: PreparedModel,
        splits: Sequence[tuple[int, int]],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **stage_options: Any,
    ) -> LocalPipeline:
        """E.g. splits [(0, 10), (10, 20), (20, 30)] for three stages; `stage_options` as
        `load_stage` takes them (precision, expert_precision, kv_dtype)."""
        return LocalPipeline([load_stage(prepared, a, b, device, dtype, **stage_options) for a, b in splits])

    def prefill(self, seq_id: str, token_ids: Sequence[int] | Tensor) -> Tensor:
        """Logits [vocab] after the prompt (or after continuing a cached prefix)."""
        x: Tensor = torch.as_tensor(token_ids, dtype=torch.long)
        for stage in self.stages:
            x = stage.prefill(seq_id, x)
        return x

    def decode(self, seq_ids: Sequence[str], token_ids: Sequence[int] | Tensor) -> Tensor:
        """Logits [B, vocab] after one more token per sequence."""
        x: Tensor = torch.as_tensor(token_ids, dtype=torch.long)
        for stage in self.stages:
            x = stage.decode(seq_ids, x)
        return x

    def free(self, seq_id: str) -> None:
        for stage in self.stages:
            stage.free(seq_id)

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, tokenizer: object = None
    ) -> list[int]:
        """Prefill + decode loop; returns the generated ids (a final EOS or stop-completing token
        included). Stop strings need the tokenizer."""
        seq_id = uuid.uuid4().hex
        try:
            logits = self.prefill(seq_id, prompt_ids)
            return decode_loop(self, seq_id, logits, len(prompt_ids), params, tokenizer)
        finally:
            self.free(seq_id)


def decode_loop(
    pipeline: LocalPipeline,
    seq_id: str,
    logits: Tensor,
    prompt_len: int,
    params: SamplingParams,
    tokenizer: object = None,
) -> list[int]:
    """Sample from `logits` and keep decoding `seq_id` (already cached in `pipeline`) until EOS,
    a stop string, `max_tokens` or the model context."""
    if params.stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    eos = set(pipeline.config.eos_token_ids)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        eos.add(int(tokenizer.eos_token_id))  # type: ignore[attr-defined]
    generator = None if params.greedy else new_generator(params.seed, logits.device)
    detok = IncrementalDetokenizer(tokenizer) if params.stop else None
    stops = StopStrings(params.stop) if params.stop else None
    out: list[int] = []
    while True:
        banned = [sorted(eos)] if params.bans_eos(len(out)) else None
        token = sample(logits[None], [params], [generator], banned)[0]
        out.append(token)
        if token in eos:  # never sampled while banned
            return out
        if detok is not None and stops is not None and stops.push(detok.push(token))[1]:
            return out
        if len(out) >= params.max_tokens or prompt_len + len(out) >= pipeline.config.max_context:
            return out
        logits = pipeline.decode([seq_id], [token])[0]


def handoff(prefill: LocalPipeline, decode: LocalPipeline, seq_id: str, free_source: bool = True) -> int:
    """Ship `seq_id`'s KV from every prefill stage to the decode stages owning the same layers
    (the two pipelines may split layers differently). Returns the bytes moved."""
    moved = 0
    for src in prefill.stages:
        kv = src.export_kv(seq_id)
        length = src.seq_len(seq_id)
        moved += sum(k.nbytes + v.nbytes for k, v in kv.values())
        for dst in decode.stages:
            dst.import_kv(seq_id, kv, length)
        if free_source:
            src.free(seq_id)
    for dst in decode.stages:
        if missing := dst.missing_layers(seq_id):
            raise ValueError(f"hand-off of {seq_id!r} left layers {missing} without KV")
    return moved


def torch_backend(req: BackendRequest) -> StageBackend:
    """The torch `StageModel` as a stage backend (the first implementation, and the oracle)."""
    return load_stage(
        PreparedModel.at(Path(req.model_path)),
        req.start,
        req.end,
        req.device,
        getattr(torch, req.activations),
        req.embedding,
        req.lm_head,
        precision=req.precision,
        expert_precision=req.expert_precision,
        kv_dtype=getattr(torch, req.kv),
    )


# Stage backends by name: a worker builds the one its `StageConfig.backend` names.
BACKENDS: dict[str, Callable[[BackendRequest], StageBackend]] = {"torch": torch_backend}


def build_backend(kind: str, req: BackendRequest) -> StageBackend:
    if kind not in BACKENDS:
        raise ValueError(f"unknown stage backend {kind!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[kind](req)

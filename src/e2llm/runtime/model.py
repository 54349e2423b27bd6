"""A Llama-family decoder stage in plain PyTorch, after gpt-fast's model.py.

A `StageModel` holds the global layers [start, end) of one model, plus the token embedding (first
stage) and the final norm + LM head (last stage). It is built on the meta device and its weights
are assigned from a state dict, so a stage never allocates layers it does not own. One `forward`
over a KV-cache step serves prefill (T tokens of one sequence, possibly continuing a cached
prefix) and batched decode (one token each of B sequences at different positions); the step
knows each row's positions and builds the masks, so rows of different lengths share one pass.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from e2llm.errors import InputError
from e2llm.runtime.backend import MemoryReport
from e2llm.runtime.checkpoint import TORCH_DTYPES, StageTensors, stage_tensors
from e2llm.runtime.kv import KVCache, KVStep
from e2llm.runtime.layers import Block, Experts, RMSNorm, rope_inv_freq, rope_scale, rope_tables
from e2llm.runtime.quant import Weight, make_linear, module_bytes
from e2llm.specs.model_spec import ModelSpec


def release_freed_memory() -> None:
    """Hand freed heap back to the OS after loading (glibc keeps it otherwise, and the stage's
    resident memory would count the decoding temporaries)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def precision_of(dtype: torch.dtype) -> str:
    return next(name for name, d in TORCH_DTYPES.items() if d == dtype)


class TokenEmbedding(nn.Module):
    """Rows of a linear module's weight as the token embedding (a tied head and the embedding
    are one module; quantized tables are per-row int8)."""

    def __init__(self, table: nn.Module):
        super().__init__()
        self.table = table

    def forward(self, ids: Tensor) -> Tensor:
        return self.table.embed(ids)  # type: ignore[operator]


class StageModel(nn.Module):
    """Layers [start, end) of a decoder (Llama family, GPT-OSS, Mixtral), with its own KV cache
    for many sequences. Weights are held at `precision` (default: that of `dtype`, the
    activation dtype), MoE experts at `expert_precision`, K/V in `kv_dtype` (default `dtype`).

    `prefill` and `decode` are the two phase entry points; inputs are token ids on the stage that
    holds the embedding, otherwise hidden states from the previous stage. Outputs are hidden states,
    or fp32 logits on the stage that holds the LM head. Not thread-safe: one caller at a time (as
    a Ray actor runs its methods by default).
    """

    def __init__(
        self,
        config: ModelSpec,
        start: int,
        end: int,
        embedding: bool,
        lm_head: bool,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        weights: Mapping[str, Weight] | None = None,
        precision: str | None = None,
        expert_precision: str | None = None,
        kv_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not 0 <= start < end <= config.n_layers:
            raise InputError("stage", f"layer range must lie within [0, {config.n_layers})", (start, end))
        self.config, self.start, self.end = config, start, end
        self.device, self.dtype = torch.device(device), dtype
        self.precision = precision or precision_of(dtype)
        self.expert_precision = expert_precision or self.precision
        self._embedding, self._lm_head = embedding, lm_head
        self.embed_tokens: nn.Module | None = None  # built by load_weights
        self.lm_head: nn.Module | None = None
        with torch.device("meta"):  # shapes only; storage comes from load_weights
            self.layers = nn.ModuleDict({str(i): Block(config, i) for i in range(start, end)})
            self.norm = RMSNorm(config.hidden, config.rms_eps) if lm_head else None
        self.inv_freq = rope_inv_freq(config).to(self.device)
        self.rope_scale = rope_scale(config)
        self.cache = KVCache(
            range(start, end),
            config.n_kv_heads,
            config.head_dim,
            kv_dtype or dtype,
            self.device,
            windows={i: config.window(i) for i in range(start, end)},
        )
        if weights is not None:
            self.load_weights(weights)

    @property
    def has_embedding(self) -> bool:
        return self._embedding

    @property
    def has_lm_head(self) -> bool:
        return self._lm_head

    def load_weights(self, weights: Mapping[str, Weight]) -> None:
        """Build this stage's modules from a checkpoint slice (keys as `load_stage_weights`
        returns them), at the stage's precision."""
        keys = list(weights)
        layers = sorted({int(k.split(".")[1]) for k in keys if k.startswith("layers.")})
        # layer by layer: a lazily decoded checkpoint then holds one layer's temporaries at a time
        for group in [[k for k in keys if k.startswith(f"layers.{i}.")] for i in layers]:
            self._load_group({k: weights[k] for k in group})
        self._load_tables(self._load_group({k: weights[k] for k in keys if not k.startswith("layers.")}))
        if leftover := [n for n, p in self.named_parameters() if p.is_meta]:
            raise InputError("weights", f"stage [{self.start}, {self.end}) lacks tensors", leftover[:3])
        release_freed_memory()

    def _load_group(self, weights: Mapping[str, Weight]) -> StageTensors:
        share = self.config.tied_embeddings and self.has_embedding and self.has_lm_head
        t = stage_tensors(weights, self.config, self.precision, self.expert_precision, share)
        device, dtype = self.device, self.dtype
        for path, (w, b) in t.linears.items():
            self.set_submodule(path, make_linear(w, b, dtype, device))
        for path, (w13, w2, b13, b2) in t.experts.items():
            bank = self.get_submodule(path)
            assert isinstance(bank, Experts)
            bank.load(w13, w2, b13, b2, dtype, device)
        for path, value in t.params.items():
            module_path, _, name = path.rpartition(".")
            dt = torch.float32 if name == "sinks" else dtype
            setattr(
                self.get_submodule(module_path), name, nn.Parameter(value.to(device, dt), requires_grad=False)
            )
        return t

    def _load_tables(self, t: StageTensors) -> None:
        device, dtype = self.device, self.dtype
        if self.has_lm_head:
            if t.lm_head is None:
                raise InputError(
                    "weights", f"stage [{self.start}, {self.end}) lacks tensor", "lm_head.weight"
                )
            self.lm_head = make_linear(t.lm_head, None, dtype, device)
        if self.has_embedding:
            if t.embedding is None:
                raise InputError(
                    "weights", f"stage [{self.start}, {self.end}) lacks tensor", "embed_tokens.weight"
                )
            if t.tied:
                assert self.lm_head is not None
                self.embed_tokens = TokenEmbedding(self.lm_head)
            else:
                self.embed_tokens = TokenEmbedding(make_linear(t.embedding, None, dtype, device))

    def weight_bytes(self) -> int:
        """Bytes of weights this stage holds in memory (shared tensors counted once)."""
        return module_bytes(self)

    # -- the one forward ---------------------------------------------------------------------
    def forward(self, x: Tensor, step: KVStep, last_only: bool = False) -> Tensor:
        """x: ids [B * T] or hidden [B * T, hidden], rows as `step` (from `self.cache.step`) lays
        them out. Returns hidden [B * T, hidden], or fp32 logits [B * T, vocab] ([B, vocab] of each
        row's last token if `last_only`) on the LM-head stage. Writes the new K/V."""
        h = self.embed_tokens(x) if self.embed_tokens is not None else x.to(self.dtype)
        cos, sin = rope_tables(step.positions, self.inv_freq, self.dtype, self.rope_scale)
        for block in self.layers.values():
            h = block(h, cos, sin, step)
        if self.lm_head is None:
            return h
        assert self.norm is not None
        if last_only and step.tokens > 1:
            h = h.view(step.rows, step.tokens, -1)[:, -1]
        return self.lm_head(self.norm(h)).float()

    # -- phases --------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, seq_id: str, inputs: Tensor | np.ndarray, all_logits: bool = False) -> Tensor:
        """Run T tokens of one sequence from its current cached length (0 for a new sequence;
        more for a chunked prefill or re-prefill). Inputs: ids [T] or hidden [T, hidden].
        Returns hidden [T, hidden], or on the LM-head stage the logits [vocab] of the last position
        ([T, vocab] of every position with `all_logits`)."""
        x = self._input(inputs)
        start, t = self.cache.length(seq_id), x.shape[0]
        if t == 0:
            raise InputError("prompt", "is empty")
        if start + t > self.config.max_context:
            raise InputError(
                "prompt", f"{start + t} tokens exceed the model context {self.config.max_context}"
            )
        if seq_id not in self.cache:
            self.cache.allocate(seq_id)
        self._check_complete([seq_id])
        out = self.forward(x, self.cache.step([seq_id], t), last_only=not all_logits)
        self.cache.advance(seq_id, t)
        return out[-1] if self.has_lm_head and not all_logits else out

    @torch.inference_mode()
    def decode(self, seq_ids: Sequence[str], inputs: Tensor | np.ndarray) -> Tensor:
        """One new token for each of B cached sequences (any mix of lengths).
        Inputs: ids [B] or hidden [B, hidden]. Returns hidden [B, hidden] or logits [B, vocab]."""
        if not seq_ids or len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"decode needs distinct sequences, got {list(seq_ids)}")
        x = self._input(inputs)
        if x.shape[0] != len(seq_ids):
            raise ValueError(f"decode got {x.shape[0]} inputs for {len(seq_ids)} sequences")
        self._check_complete(seq_ids)
        if max(self.cache.length(s) for s in seq_ids) + 1 > self.config.max_context:
            raise InputError("decode", f"context exceeds the model context {self.config.max_context}")
        out = self.forward(x, self.cache.step(seq_ids, 1))
        for s in seq_ids:
            self.cache.advance(s, 1)
        return out

    def _input(self, inputs: Tensor | np.ndarray) -> Tensor:
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(np.array(inputs))  # arrays from Ray are read-only: copy
        return inputs.to(self.device)

    def _check_complete(self, seq_ids: Sequence[str]) -> None:
        for s in seq_ids:
            if s not in self.cache:
                raise KeyError(f"sequence {s!r} has no KV on stage [{self.start}, {self.end})")
            if missing := self.cache.missing_layers(s):
                raise ValueError(f"sequence {s!r} lacks KV of layers {missing} on this stage")

    # -- KV management ---------------------------------------------------------------------------
    @torch.inference_mode()
    def export_kv(self, seq_id: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Global layer -> (k, v) copies, each [kv_heads, T, head_dim]."""
        return self.cache.export(seq_id)

    @torch.inference_mode()
    def import_kv(
        self, seq_id: str, kv: Mapping[int, tuple[np.ndarray, np.ndarray]], length: int
    ) -> list[int]:
        """Take the owned layers of `kv` (a subset or superset of this stage's layers) for a
        sequence of `length` tokens; returns the layers taken. Decode needs every owned layer."""
        return self.cache.import_(seq_id, kv, length)

    def missing_layers(self, seq_id: str) -> list[int]:
        return self.cache.missing_layers(seq_id)

    def free(self, seq_id: str) -> None:
        self.cache.free(seq_id)

    def seq_len(self, seq_id: str) -> int:
        return self.cache.length(seq_id)

    def kv_bytes(self) -> int:
        """Bytes of K/V held for live sequences (reserved pool memory may be larger)."""
        return self.cache.used_bytes()

    def reserve_kv(self, sequences: int, tokens: int) -> None:
        """Reserve the KV pool for `sequences` sequences of `tokens` tokens (the plan's load)."""
        self.cache.reserve(sequences, tokens)

    def memory(self) -> MemoryReport:
        cfg = self.config
        per_token = 2 * cfg.n_kv_heads * cfg.head_dim * self.cache.element_size * (self.end - self.start)
        return MemoryReport(self.weight_bytes(), self.kv_bytes(), self.kv_reserved_bytes(), per_token)

    def kv_reserved_bytes(self) -> int:
        """Bytes of the KV pool (grown by doubling; kept for reuse after sequences end)."""
        return self.cache.reserved_bytes()

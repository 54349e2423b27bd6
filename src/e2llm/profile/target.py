"""What the profiler times: a cut-down copy of the model with the same layer shape.

Layers of one model are identical, so a stage of a few decoder layers (random weights) plus the
embedding and the final norm + LM head gives every per-layer time the cost model needs, without
the full model having to fit in memory (the method's trick). The stage is the runtime's own
`StageModel` — the code `e2llm serve` runs — driven through the same entry points a stage
worker uses: `prefill` of one sequence into its KV pool, batched `decode`, and on the head
stage norm + LM head + the greedy token choice (argmax, brought back to the host).

Each `*_fn` returns a zero-argument callable whose duration is what gets timed; building its
inputs (hidden states, a KV pool filled to the wanted context) happens outside the timed call.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from e2llm.runtime.model import StageModel
from e2llm.specs.model_spec import ModelSpec, profile_shape

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stage_spec(model: ModelSpec, n_layers: int) -> ModelSpec:
    """What the stack runs: `model`'s profiled layer shape (`profile_shape`) with `n_layers` dense,
    full-attention Llama layers (a MoE layer is timed as one expert's FFN; the cost model scales it
    by the active experts). The head shares the embedding matrix (same time, half the memory)."""
    return dataclasses.replace(
        profile_shape(model),
        n_layers=n_layers,
        max_context=model.max_context,
        tied_embeddings=True,
        n_experts=0,
        experts_per_token=0,
    )


def random_weights(cfg: ModelSpec, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A checkpoint in Hugging Face names with small random values (finite in fp16/bf16)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype) * 0.02

    h, kv = cfg.hidden, cfg.n_kv_heads * cfg.head_dim
    out = {"embed_tokens.weight": w(cfg.vocab, h), "norm.weight": torch.ones(h, device=device, dtype=dtype)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": w(cfg.n_heads * cfg.head_dim, h),
            p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, cfg.n_heads * cfg.head_dim),
            p + "mlp.gate_proj.weight": w(cfg.intermediate, h),
            p + "mlp.up_proj.weight": w(cfg.intermediate, h),
            p + "mlp.down_proj.weight": w(h, cfg.intermediate),
            p + "input_layernorm.weight": torch.ones(h, device=device, dtype=dtype),
            p + "post_attention_layernorm.weight": torch.ones(h, device=device, dtype=dtype),
        }
    return out


def spread_lengths(batch: int, context: int) -> list[int]:
    """`batch` lengths spread evenly over [0.75, 1.25] x `context` with mean `context` (all equal
    to `context` for one sequence), each >= 1."""
    if batch == 1:
        return [context]
    half = context // 4
    lengths = [max(1, context - half + round(2 * half * i / (batch - 1))) for i in range(batch)]
    lengths[-1] += batch * context - sum(lengths)  # exact mean
    return lengths


@dataclass
class LayerStack:
    """`n_layers` random-weight decoder layers of `model`'s shape, plus embedding and LM head.

    Two runtime stages: `layers` (hidden states in and out, as a middle pipeline stage) and
    `ends` (embedding + layer 0 + norm/LM head; only its embedding and head are timed).
    """

    model: ModelSpec
    n_layers: int
    device: torch.device
    dtype: torch.dtype
    _ids: itertools.count[int] = field(default_factory=itertools.count, init=False)
    _live: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        cfg = stage_spec(self.model, self.n_layers)
        weights = random_weights(cfg, self.device, self.dtype)
        self.layers = StageModel(cfg, 0, self.n_layers, False, False, self.device, self.dtype)
        self.layers.load_weights({k: v for k, v in weights.items() if k.startswith("layers.")})
        self.ends = StageModel(cfg, 0, 1, True, True, self.device, self.dtype)
        self.ends.load_weights(
            {k: v for k, v in weights.items() if not k.startswith("layers.") or k.startswith("layers.0.")}
        )

    def _hidden(self, rows: int) -> torch.Tensor:
        return torch.randn(rows, self.model.hidden, device=self.device, dtype=self.dtype)

    def _new_seqs(self, n: int) -> list[str]:
        """Fresh sequence ids; the sequences of the previous point are freed (pool reused)."""
        for s in self._live:
            self.layers.free(s)
        self._live = [f"p{next(self._ids)}" for _ in range(n)]
        return self._live

    def prefill_fn(self, tokens: int) -> Callable[[], object]:
        """All layers over one prompt of `tokens` tokens into an empty sequence slot."""
        h = self._hidden(tokens)
        self._new_seqs(0)

        def run() -> None:
            seq = f"p{next(self._ids)}"
            self.layers.prefill(seq, h)
            self.layers.free(seq)

        return run

    def decode_fn(self, batch: int, context: int) -> Callable[[], object]:
        """All layers, one decode step for `batch` sequences holding `context` tokens of KV on
        average (zeros: attention cost does not depend on the values).

        As in a served batch, the sequences differ in length (spread evenly over +-25% around
        `context`), so the step takes the masked attention path the runtime takes for such a
        batch. Each step's token is taken back afterwards so every timed call sees the same
        contexts."""
        m = self.model
        seqs = self._new_seqs(batch)
        for s, length in zip(seqs, spread_lengths(batch, context), strict=True):
            zeros = np.zeros((m.n_kv_heads, length, m.head_dim), dtype=np.float32)
            self.layers.import_kv(s, {i: (zeros, zeros) for i in range(self.n_layers)}, length)
        h = self._hidden(batch)

        def step() -> None:
            self.layers.decode(seqs, h)
            for s in seqs:
                self.layers.cache.advance(s, -1)

        return step

    def head_fn(self, rows: int) -> Callable[[], object]:
        """Final norm + LM head over `rows` rows and the greedy choice of each row's token, as
        the last stage of a pipeline does it (prefill: 1 row; decode: one per sequence)."""
        h = self._hidden(rows)
        ends = self.ends
        assert ends.norm is not None and ends.lm_head is not None
        norm, head = ends.norm, ends.lm_head
        return lambda: head(norm(h)).float().argmax(dim=-1).cpu()

    def embed_fn(self, tokens: int) -> Callable[[], object]:
        """Embedding lookup of `tokens` token ids."""
        ids = torch.randint(0, self.model.vocab, (tokens,), device=self.device)
        embed = self.ends.embed_tokens
        assert embed is not None
        return lambda: embed(ids)

"""From checkpoint tensors (HF names, any weight form) to a stage's modules at the plan's precision.

Both loaders (`weights.load_stage_weights` for safetensors, `gguf_weights` for GGUF) hand over
tensors under Hugging Face names without the `model.` prefix. MoE experts use one layout whatever
the source: `layers.N.mlp.experts.{gate,up,down}_proj` [E, out, in] (+ `_bias` [E, out]) and the
router `layers.N.mlp.router.{weight,bias}`. Here q/k/v and gate/up are fused and every weight is
brought to the precision the plan chose (`at_precision`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from e2llm.errors import InputError
from e2llm.runtime.quant import (
    GROUP,
    Int8Weight,
    Mxfp4Weight,
    Weight,
    cat_rows,
    dequantize,
    to_int4,
    to_int8,
)
from e2llm.specs.model_spec import ModelSpec, table_precision

FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")
PRECISIONS = (*FLOAT_PRECISIONS, "int8", "q4", "mxfp4")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def at_precision(w: Weight, precision: str) -> Weight:
    """`w` in the form a stage at `precision` holds it. Float precisions hold dense weights;
    int8 holds per-row int8; q4 (and mxfp4) keep a file's 4- and 8-bit forms and quantize dense
    weights to 4 bits in groups of 32; MXFP4 expert banks stay MXFP4 at every non-float precision."""
    if precision in FLOAT_PRECISIONS:
        return dequantize(w)
    if isinstance(w, Mxfp4Weight):
        return w
    if precision == "int8":
        return w if isinstance(w, Int8Weight) else to_int8(dequantize(w))
    if isinstance(w, Tensor):
        return to_int4(w) if w.shape[-1] % GROUP == 0 else w
    return w


@dataclass
class StageTensors:
    """A stage's weights, grouped by the module that will hold them."""

    linears: dict[str, tuple[Weight, Tensor | None]] = field(default_factory=dict)  # module path
    experts: dict[str, tuple[Weight, Weight, Tensor | None, Tensor | None]] = field(default_factory=dict)
    params: dict[str, Tensor] = field(default_factory=dict)  # norms, sinks
    embedding: Weight | None = None
    lm_head: Weight | None = None
    tied: bool = False  # embedding and LM head are one tensor (on a stage holding both)


def _get(weights: Mapping[str, Weight], key: str) -> Weight:
    if key not in weights:
        raise InputError("weights", "checkpoint lacks tensor", key)
    return weights[key]


def _tensor(weights: Mapping[str, Weight], key: str) -> Tensor:
    return dequantize(_get(weights, key))


def stage_tensors(
    weights: Mapping[str, Weight],
    cfg: ModelSpec,
    precision: str = "fp32",
    expert_precision: str | None = None,
    share_head: bool = False,
) -> StageTensors:
    """Fuse and convert a stage's checkpoint slice. `share_head`: the stage holds both the
    embedding and a tied LM head, which then share one tensor."""
    out = StageTensors()
    experts_at = expert_precision or precision
    layers = sorted({int(k.split(".")[1]) for k in weights if k.startswith("layers.")})
    for i in layers:
        p, q = f"layers.{i}.", f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."

        def bias(key: str, wanted: bool) -> Tensor | None:
            return _tensor(weights, key) if wanted else None

        qkv = cat_rows([_get(weights, attn + f"{n}_proj.weight") for n in "qkv"])
        qkv_bias = (
            torch.cat([_tensor(weights, attn + f"{n}_proj.bias") for n in "qkv"]) if cfg.qkv_bias else None
        )
        out.linears[q + "attention.wqkv"] = (at_precision(qkv, precision), qkv_bias)
        out.linears[q + "attention.wo"] = (
            at_precision(_get(weights, attn + "o_proj.weight"), precision),
            bias(attn + "o_proj.bias", cfg.o_bias),
        )
        if cfg.attention_sinks:
            out.params[q + "attention.sinks"] = _tensor(weights, attn + "sinks")
        out.params[q + "attention_norm.weight"] = _tensor(weights, p + "input_layernorm.weight")
        out.params[q + "ffn_norm.weight"] = _tensor(weights, p + "post_attention_layernorm.weight")
        if cfg.n_experts:
            ex = mlp + "experts."
            out.linears[q + "feed_forward.router"] = (
                dequantize(_get(weights, mlp + "router.weight")),
                bias(mlp + "router.bias", cfg.moe_bias),
            )
            w13 = cat_rows([_get(weights, ex + "gate_proj"), _get(weights, ex + "up_proj")])
            b13 = (
                torch.cat(
                    [_tensor(weights, ex + "gate_proj_bias"), _tensor(weights, ex + "up_proj_bias")], -1
                )
                if cfg.moe_bias
                else None
            )
            out.experts[q + "feed_forward"] = (
                at_precision(w13, experts_at),
                at_precision(_get(weights, ex + "down_proj"), experts_at),
                b13,
                bias(ex + "down_proj_bias", cfg.moe_bias),
            )
        else:
            w13 = cat_rows([_get(weights, mlp + "gate_proj.weight"), _get(weights, mlp + "up_proj.weight")])
            out.linears[q + "feed_forward.w13"] = (at_precision(w13, precision), None)
            out.linears[q + "feed_forward.w2"] = (
                at_precision(_get(weights, mlp + "down_proj.weight"), precision),
                None,
            )
    if "norm.weight" in weights:
        out.params["norm.weight"] = _tensor(weights, "norm.weight")
    emb = weights.get("embed_tokens.weight")
    head = weights.get("lm_head.weight")
    # Embedding and LM head of a quantized model are per-row int8 (`specs.model.table_precision`):
    # a row lookup needs a per-row layout, and a tied pair then shares one copy.
    tables = table_precision(precision)
    if share_head and emb is not None:
        out.embedding = out.lm_head = at_precision(emb, tables)
        out.tied = True
        return out
    if emb is not None:
        out.embedding = at_precision(emb, tables)
    if head is not None:
        out.lm_head = at_precision(head, tables)
    return out

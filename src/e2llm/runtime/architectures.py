"""Which models the runtime's stage model executes, and the `ModelSpec` it runs them from.

The stage model is written against `ModelSpec` itself (specs/model_spec.py), read from the
model's `config.json` by the same reader the planner uses; this module adds only the runtime's
own limits: the Llama family (Llama, Qwen2, Mistral, SmolLM2 differ in a few switches: q/k/v
bias, sliding window, rope scaling, tied embeddings), SiLU gates, no MLP bias.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.gguf_header import GGUFHeader
from e2llm.specs.model_files import spec_from_hf_dict
from e2llm.specs.model_spec import ModelSpec

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gpt_oss", "mixtral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def runtime_spec(raw: Mapping[str, Any], where: str = "config.json", name: str = "model") -> ModelSpec:
    """The spec of an HF config dict the runtime can execute; anything else is an `InputError`
    naming the field and value."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(where, f"model_type must be one of {', '.join(SUPPORTED_MODEL_TYPES)}", model_type)
    if raw.get("hidden_act", "silu") != "silu":
        raise InputError(where, "hidden_act must be silu", raw.get("hidden_act"))
    if raw.get("mlp_bias"):
        raise InputError(where, "mlp_bias is not supported", True)
    if model_type == "qwen2" and raw.get("use_sliding_window"):
        raise InputError(where, "Qwen2 use_sliding_window is not supported", True)
    spec = spec_from_hf_dict(raw, where, name)
    if spec.rope_type not in SUPPORTED_ROPE_TYPES:
        raise InputError(where, f"rope type must be one of {', '.join(SUPPORTED_ROPE_TYPES)}", spec.rope_type)
    if spec.sliding_window and model_type not in ("mistral", "mixtral", "gpt_oss"):
        # Llama-family configs other than Mistral may carry a window they never use (Qwen2's
        # `sliding_window` with `use_sliding_window: false`); transformers ignores it there too.
        spec = dataclasses.replace(spec, sliding_window=0, sliding_layers=())
    return spec


def check_gguf_tensors(header: GGUFHeader, spec: ModelSpec, where: str) -> None:
    """Before a GGUF is converted: every tensor a Llama-family stage loads is in the file with the
    shape its metadata implies, every tensor has a type `gguf` can dequantise, and its data lies
    inside the file. Else an `InputError` naming the file and the tensor."""
    import gguf  # imported lazily: only GGUF inputs need it

    h, q, kv, ffn = (
        spec.hidden,
        spec.n_heads * spec.head_dim,
        spec.n_kv_heads * spec.head_dim,
        spec.intermediate,
    )
    want: dict[str, tuple[int, ...]] = {"token_embd.weight": (h, spec.vocab), "output_norm.weight": (h,)}
    if not spec.tied_embeddings:
        want["output.weight"] = (h, spec.vocab)
    for i in range(spec.n_layers):
        for part, shape in (
            ("attn_norm", (h,)),
            ("ffn_norm", (h,)),
            ("attn_q", (h, q)),
            ("attn_k", (h, kv)),
            ("attn_v", (h, kv)),
            ("attn_output", (q, h)),
            ("ffn_gate", (h, ffn)),
            ("ffn_up", (h, ffn)),
            ("ffn_down", (ffn, h)),
        ):
            want[f"blk.{i}.{part}.weight"] = shape
    for name, expected in want.items():
        tensor = header.tensors.get(name)
        if tensor is None:
            raise InputError(f"{where}: {name}", "tensor missing from the GGUF")
        if tensor.shape != expected:
            raise InputError(
                f"{where}: {name}", f"shape must be {list(expected)} by the metadata", list(tensor.shape)
            )
    align = header.metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0:
        raise InputError(f"{where}: general.alignment", "must be a positive integer", align)
    data_start = -(-header.tensors_end // align) * align
    for name, tensor in header.tensors.items():
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor.ggml_type)]
        except (ValueError, KeyError):
            raise InputError(f"{where}: {name}", "unknown GGUF tensor type", tensor.ggml_type) from None
        values = math.prod(tensor.shape)
        if values % block:
            raise InputError(
                f"{where}: {name}", f"size is not a multiple of its type's block ({block})", values
            )
        end = data_start + tensor.offset + values // block * block_bytes
        if end > header.file_size:
            raise InputError(f"{where}: {name}", "tensor data runs past the end of the file", f"byte {end}")

"""Which models the runtime's stage model executes, and the `ModelSpec` it runs them from.

The stage model is written against `ModelSpec` itself (specs/model_spec.py), read from the
model's `config.json` by the same reader the planner uses; this module adds only the runtime's
own limits: the Llama family (Llama, Qwen2, Mistral, SmolLM2 differ in a few switches: q/k/v
bias, sliding window, rope scaling, tied embeddings), SiLU gates, no MLP bias.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.model_files import spec_from_hf_dict
from e2llm.specs.model_spec import ModelSpec

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


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
    if spec.sliding_window and model_type != "mistral":
        # Llama-family configs other than Mistral may carry a window they never use (Qwen2's
        # `sliding_window` with `use_sliding_window: false`); transformers ignores it there too.
        spec = dataclasses.replace(spec, sliding_window=0, sliding_layers=())
    return spec

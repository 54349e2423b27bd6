"""Shared fixtures of the runtime tests: the real SmolLM2 model, prepared once per session.

The prepared model (config and tokenizer; the weights stay in the GGUF) lives in the e2llm cache
(`E2LLM_CACHE_DIR`, default ~/.cache/e2llm): the first session on a fresh machine extracts the
tokenizer (~10 s). `smollm2_transformers` is the reference: transformers' own fp32 dequantisation
of the same GGUF (~25 s, once per session).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from e2llm.runtime.weights import PreparedModel, default_model_source, prepare_model


@pytest.fixture(scope="session")
def smollm2_prepared() -> PreparedModel:
    return prepare_model(default_model_source())


@pytest.fixture(scope="session")
def smollm2_transformers() -> Any:
    """transformers' LlamaForCausalLM of the SmolLM2 GGUF, dequantised to fp32 by transformers."""
    return prepare_model(default_model_source()).transformers_model(torch.float32).eval()


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run runtime tests on one torch thread: on a shared 2-core box, two OpenMP threads that
    spin-wait for each other make tiny-model steps ~50x slower (0.1 s instead of 2 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared fixtures of the runtime tests: the real SmolLM2 model, prepared once per session, and
one live `e2llm serve` (`api_server`) that the API test modules share.

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
from servekit import API_KEY, API_PLAN

from e2llm.bench.local_server import LocalServer, serving_plan
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


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A live `e2llm serve` of API_PLAN, its API key from `E2LLM_API_KEY` (so it is checked
    that the key stays out of the Ray processes), shared by the API test modules."""
    env = {"E2LLM_API_KEY": API_KEY}
    with serving_plan(API_PLAN, tmp_path_factory.mktemp("serve"), env=env) as server:
        yield server
    assert "plan: system=test" in server.log.read_text()  # the plan in use was printed at start

"""Memory-true stages: what a stage holds (weights + KV reserved at the planned load) against the
cost model's prediction, and the refusal of a stage that does not fit its device."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import save_mxfp4_checkpoint, tiny_gpt_oss

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.errors import InputError
from e2llm.plan.types import Replica, Role, Stage
from e2llm.runtime.engine import load_stage
from e2llm.runtime.memory import GIB, check_fits, kv_reservation, predicted_weight_bytes
from e2llm.runtime.precision import stage_precision
from e2llm.runtime.weights import ModelSource, PreparedModel, prepare_model
from e2llm.specs.model_catalog import load_model, smollm2_gguf_path
from e2llm.specs.model_spec import ModelSpec

CONCURRENCY, CONTEXT = 4, 512


def _spec() -> ModelSpec:
    return load_model(smollm2_gguf_path())  # the planner's view of the GGUF: q4, KV 2 B/value


def test_a_stage_that_does_not_fit_fails_naming_device_need_and_limit() -> None:
    spec = _spec()
    stage = Stage("pi4", 0, 30, embedding=True, lm_head=True, memory_gb=1.2)
    replica = Replica(0, Role.DECODER, (stage,), concurrency=CONCURRENCY)
    info = {"weight_bytes": int(0.6 * GIB), "kv_bytes_per_token": 23040}
    with pytest.raises(InputError) as err:
        check_fits(replica, [info], spec, {"pi4": 1.0})
    line = str(err.value)
    assert "\n" not in line and "device pi4" in line and "needs" in line and "limit 1.00 GiB" in line
    check_fits(replica, [info], spec, {"pi4": 4.0})  # fits: no error


def test_kv_reservation_covers_the_planned_kv() -> None:
    spec = _spec()
    kv = CONCURRENCY * sum(spec.kv_bytes_per_token(i) * CONTEXT for i in range(10))
    stage = Stage(
        "d",
        0,
        10,
        embedding=True,
        memory_gb=(predicted_weight_bytes(spec, Stage("d", 0, 10, True)) + kv + 0.75 * GIB) / GIB,
    )
    sequences, tokens = kv_reservation(
        spec, Replica(0, Role.DECODER, (stage,), concurrency=CONCURRENCY), stage
    )
    assert sequences == CONCURRENCY and abs(tokens - CONTEXT) <= 1


def test_precision_setting_follows_the_plan_and_refuses_missing_kernels() -> None:
    setting = stage_precision(_spec(), "float32", "cpu")
    assert (setting.weights, setting.activations, setting.kv) == ("q4", "bfloat16", "bfloat16")
    with pytest.raises(InputError, match=r"device mps: has no kernels for weight_precision \(got 'q4'\)"):
        stage_precision(_spec(), "float32", "mps")
    with pytest.raises(InputError, match="kv_bytes_per_value"):
        stage_precision(dataclasses.replace(_spec(), kv_bytes_per_value=1.0), "float32", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("split", [(0, 10), (10, 20), (20, 30), (0, 30)])
def test_stage_memory_matches_the_cost_model(smollm2_prepared: PreparedModel, split: tuple[int, int]) -> None:
    """Resident weights + KV reserved for the planned concurrency and context, per stage of a
    3-stage (and a 1-stage) SmolLM2 Q4_1 plan, within 10% of the cost model's prediction."""
    spec = _spec()
    a, b = split
    stage = load_stage(smollm2_prepared, a, b, dtype=torch.bfloat16, precision="q4", kv_dtype=torch.bfloat16)
    stage.reserve_kv(CONCURRENCY, CONTEXT)
    mem = stage.memory()
    planned = Stage("d", a, b, embedding=a == 0, lm_head=b == 30)
    predicted_kv = CONCURRENCY * sum(
        spec.kv_bytes_per_token(i) * spec.kv_tokens(i, CONTEXT) for i in range(a, b)
    )
    predicted = predicted_weight_bytes(spec, planned) + predicted_kv
    measured = mem.weight_bytes + mem.kv_reserved_bytes
    assert mem.kv_reserved_bytes == predicted_kv  # KV at the planned bytes per value, nothing more
    assert abs(measured / predicted - 1) <= 0.10, (measured, predicted)


@pytest.fixture(scope="module")
def tiny_gpt_oss_prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedModel:
    path = tmp_path_factory.mktemp("tiny-gpt-oss")
    save_mxfp4_checkpoint(tiny_gpt_oss(), path)
    return prepare_model(ModelSource.from_path(path))


@pytest.mark.parametrize("split", [(0, 1), (1, 3), (0, 3)])
def test_sliding_layers_hold_only_their_window(tiny_gpt_oss_prepared: PreparedModel, split) -> None:
    """Tiny GPT-OSS (window 4 on layers 0 and 2) planned at 4 sequences x 64 tokens: the plan's KV
    bytes reserve exactly that load (sliding layers at their window, as the cost model counts),
    and the stage holds weights + KV within 10% of the prediction."""
    prepared = tiny_gpt_oss_prepared
    spec = dataclasses.replace(
        prepared.config, weight_precision="fp32", expert_precision="mxfp4", kv_bytes_per_value=4.0
    )
    a, b = split
    planned = Stage("d", a, b, embedding=a == 0, lm_head=b == 3)
    kv = CONCURRENCY * sum(spec.kv_bytes_per_token(i) * spec.kv_tokens(i, 64) for i in range(a, b))
    stage_gb = (predicted_weight_bytes(spec, planned) + kv + RUNTIME_OVERHEAD_BYTES) / GIB
    planned = dataclasses.replace(planned, memory_gb=stage_gb)
    sequences, tokens = kv_reservation(
        spec, Replica(0, Role.DECODER, (planned,), concurrency=CONCURRENCY), planned
    )
    assert sequences == CONCURRENCY and tokens >= 64  # only-sliding stages: the model's context
    stage = load_stage(prepared, a, b, precision="fp32", expert_precision="mxfp4")
    stage.reserve_kv(sequences, tokens)
    mem = stage.memory()
    assert mem.kv_reserved_bytes == kv
    measured, predicted = mem.weight_bytes + mem.kv_reserved_bytes, predicted_weight_bytes(spec, planned) + kv
    assert abs(measured / predicted - 1) <= 0.10, (measured, predicted)

"""The distributed runtime on real Ray actors with the real SmolLM2 model.

Greedy output must equal single-process transformers `generate`: through a PREFILL -> DECODER
KV hand-off between replicas that split the layers differently (several requests batched
together, joining at different times), on a 3-stage COLOCATED replica, and on a MIXED replica
whose iterations carry prompt chunks beside the decode batch. One local Ray instance serves the
whole module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from e2llm.bench.server_metrics import metric_sum
from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.cluster import start_ray, stop_ray
from e2llm.runtime.generation import Generation, TextStream
from e2llm.runtime.service import Deployment, LaunchOptions
from e2llm.runtime.text import encode_chat
from e2llm.runtime.weights import PreparedModel

pytestmark = pytest.mark.slow

DEVICES = ["cpu0", "cpu1", "cpu2", "cpu3"]
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]
MAX_TOKENS = 12
FIXED_ROLES = PolicySettings()


def _plan(*replicas: Replica) -> Plan:
    return Plan(
        system="test", model="smollm2-135m", objective=0.0, objective_kind="bottleneck_s", replicas=replicas
    )


def _stages(*ranges: tuple[str, int, int]) -> tuple[Stage, ...]:
    last = len(ranges) - 1
    return tuple(Stage(d, a, b, embedding=i == 0, lm_head=i == last) for i, (d, a, b) in enumerate(ranges))


PD_PLAN = _plan(
    Replica(0, Role.PREFILL, _stages(("cpu0", 0, 10), ("cpu1", 10, 30))),
    Replica(1, Role.DECODER, _stages(("cpu2", 0, 20), ("cpu3", 20, 30)), concurrency=4),
)
MIXED_PLAN = _plan(Replica(0, Role.MIXED, _stages(("cpu0", 0, 12), ("cpu1", 12, 30)), concurrency=3))
CHUNK_TOKENS = 16  # a chat prompt (~35 tokens) takes several iterations beside the batch
COLOCATED_PLAN = _plan(
    Replica(0, Role.COLOCATED, _stages(("cpu0", 0, 7), ("cpu1", 7, 19), ("cpu2", 19, 30)), concurrency=4)
)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    start_ray(DEVICES)
    try:
        yield
    finally:
        stop_ray()


@pytest.fixture(scope="module")
def tokenizer(smollm2_prepared: PreparedModel) -> Any:
    return smollm2_prepared.tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    return [encode_chat(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def reference(smollm2_transformers: Any, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy tokens of single-process transformers for each prompt."""
    import torch

    model = smollm2_transformers
    out = []
    for ids in prompts:
        gen = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        out.append(gen[0, len(ids) :].tolist())
    return out


def _generation(prompt: list[int], tokenizer: Any, eos: frozenset[int], **kw: Any) -> Generation:
    settings = {"temperature": 0.0, "top_p": 1.0, "seed": None, **kw}
    return Generation(prompt, MAX_TOKENS, eos_ids=eos, text=TextStream(tokenizer), **settings)


async def _collect(gen: Generation) -> str:
    parts = []
    while True:
        event = await gen.events.get()
        parts.append(event.text)
        if event.finish_reason is not None:
            assert event.finish_reason != "error", event.error
            return "".join(parts)


def _serve(
    plan: Plan,
    prepared: PreparedModel,
    gens: list[Generation],
    stagger_s: float = 0.0,
    settings: PolicySettings = FIXED_ROLES,
    metrics: list[bytes] | None = None,
) -> list[str]:
    """Run `gens` on a fresh deployment of `plan` (submitted `stagger_s` apart) and tear it down;
    `metrics` gets its `/metrics` text at the end."""
    deployment = Deployment.launch(plan, str(prepared.path), LaunchOptions(threads=1), settings)

    async def main() -> list[str]:
        deployment.start()
        try:
            tasks = []
            for gen in gens:
                deployment.submit(gen)
                tasks.append(asyncio.create_task(_collect(gen)))
                await asyncio.sleep(stagger_s)
            texts = await asyncio.gather(*tasks)
            await asyncio.sleep(0.3)  # let the fire-and-forget frees land before reading stats
            rows = await deployment.stage_stats()
            assert all(r["sequences"] == 0 and r["kv_bytes"] == 0 for r in rows), rows
            if metrics is not None:
                metrics.append(deployment.metrics.render())
            return list(texts)
        finally:
            await deployment.stop()

    try:
        return asyncio.run(main())
    finally:
        deployment.kill_actors()


def test_pd_handoff_with_different_splits_matches_transformers(
    ray_session: None,
    smollm2_prepared: PreparedModel,
    tokenizer: Any,
    prompts: list[list[int]],
    reference: Any,
) -> None:
    eos = frozenset(smollm2_prepared.config.eos_token_ids)
    gens = [_generation(p, tokenizer, eos) for p in prompts]
    texts = _serve(PD_PLAN, smollm2_prepared, gens, stagger_s=0.15)  # join the batch at different steps
    for gen, ref in zip(gens, reference, strict=True):
        assert gen.generated == ref[: len(gen.generated)]
        assert gen.finish_reason == ("stop" if len(gen.generated) < MAX_TOKENS else "length")
    assert "Paris" in texts[0]


def test_colocated_three_stages_matches_transformers_and_seeded_sampling_repeats(
    ray_session: None,
    smollm2_prepared: PreparedModel,
    tokenizer: Any,
    prompts: list[list[int]],
    reference: Any,
) -> None:
    eos = frozenset(smollm2_prepared.config.eos_token_ids)
    greedy = _generation(prompts[0], tokenizer, eos)
    seeded = [_generation(prompts[1], tokenizer, eos, temperature=0.9, top_p=0.9, seed=7) for _ in range(2)]
    texts = _serve(COLOCATED_PLAN, smollm2_prepared, [greedy, *seeded])
    assert greedy.generated == reference[0][: len(greedy.generated)]
    assert "Paris" in texts[0]
    assert seeded[0].generated == seeded[1].generated  # same seed, same tokens, even batched together


def test_mixed_replica_chunks_prompts_beside_the_batch_and_matches_transformers(
    ray_session: None,
    smollm2_prepared: PreparedModel,
    tokenizer: Any,
    prompts: list[list[int]],
    reference: Any,
) -> None:
    """Staggered arrivals: later prompts are prefilled chunk by chunk while earlier ones decode
    (iterations of decode step + chunk); every request is exactly its served-alone greedy text."""
    eos = frozenset(smollm2_prepared.config.eos_token_ids)
    gens = [_generation(p, tokenizer, eos, ignore_eos=True) for p in [*prompts, prompts[0]]]
    settings = PolicySettings(chunk_tokens=CHUNK_TOKENS)
    metrics: list[bytes] = []
    _serve(MIXED_PLAN, smollm2_prepared, gens, stagger_s=0.3, settings=settings, metrics=metrics)
    for gen, ref in zip(gens, [*reference, reference[0]], strict=True):
        assert len(gen.generated) == MAX_TOKENS
        stop = next((i for i, t in enumerate(ref) if t in eos), len(ref))  # EOS is banned here
        assert gen.generated[:stop] == ref[:stop]
    assert all(len(p) > 2 * CHUNK_TOKENS for p in prompts)  # chunked, not prefilled in one go
    mixed = metric_sum(metrics[0].decode(), "e2llm_mixed_iterations_total")
    assert mixed is not None and mixed >= 2  # iterations did carry chunks beside a decode batch

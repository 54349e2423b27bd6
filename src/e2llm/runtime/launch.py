"""Starting a plan: one stage actor per (replica, device), pinned to its device's Ray resource,
each loading its layers; then one `ReplicaRunner` per replica, with its decoder KV budget.

`start_runners` blocks until every actor has loaded its weights (seconds to minutes); a
deployment calls it off the event loop when it switches to a re-made plan while serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.errors import InputError
from e2llm.plan.types import Plan, Stage
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.actors import StageConfig, spawn_stage_actor
from e2llm.runtime.capacity import plan_capacities
from e2llm.runtime.cluster import torch_threads_per_actor
from e2llm.runtime.memory import check_fits, kv_reservation
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.precision import stage_precision
from e2llm.runtime.replica import ReplicaRunner
from e2llm.specs.units import GIB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchOptions:
    torch_device: str = "cpu"  # "cpu" | "cuda" | "mps" | "auto"
    dtype: str = "float32"
    threads: int | None = None  # torch threads per actor; None: cores // actors
    # Limit each decoder's KV by its devices' memory_gb (real devices). Emulated local devices
    # share this machine's memory, so there only the planned concurrency limits a batch.
    enforce_device_memory: bool = False


def kv_budget_tokens(
    stages: Sequence[Stage], infos: Sequence[dict[str, Any]], memory_gb: dict[str, Any]
) -> int | None:
    """Tokens of KV a decoder may hold: on each stage's device, its memory minus the weights it
    loaded and the runtime overhead, over the KV bytes per token of its layers; the tightest
    stage decides. None when the plan carries no device memory (then only concurrency limits)."""
    budgets = []
    for stage, info in zip(stages, infos, strict=True):
        gb = memory_gb.get(stage.device)
        if not isinstance(gb, int | float) or gb <= 0:
            return None
        free = gb * GIB - info["weight_bytes"] - RUNTIME_OVERHEAD_BYTES
        budgets.append(max(0, int(free // max(1, info["kv_bytes_per_token"]))))
    return min(budgets) if budgets else None


def device_memory_gb(plan: Plan) -> dict[str, Any]:
    """Each device's `memory_gb` as the plan's embedded cluster gives it (empty without one)."""
    return {d.name: d.memory_gb for d in plan.cluster.devices} if plan.cluster is not None else {}


def start_runners(
    plan: Plan,
    model_path: str,
    options: LaunchOptions,
    metrics: ServingMetrics,
    generation: int,
    chunk_tokens: int = PolicySettings().chunk_tokens,
) -> list[ReplicaRunner]:
    """Start the plan's stage actors (Ray must be initialised), wait for their weights and wrap
    each replica in a runner (not started; MIXED replicas iterate `chunk_tokens` tokens). Blocks:
    call it off the event loop while serving."""
    import ray

    t0 = time.monotonic()
    n_actors = sum(len(r.stages) for r in plan.replicas)
    threads = options.threads or torch_threads_per_actor(n_actors)
    precision = stage_precision(plan.model_spec, options.dtype, options.torch_device)
    spec = plan.model_spec
    actors_by_replica = []
    for replica in plan.replicas:
        actors = []
        for stage in replica.stages:
            config = StageConfig(
                model_path=model_path,
                start=stage.start,
                end=stage.end,
                embedding=stage.embedding,
                lm_head=stage.lm_head,
                torch_device=options.torch_device,
                dtype=precision.activations,
                threads=threads,
                precision=precision.weights,
                expert_precision=precision.experts,
                kv_dtype=precision.kv,
                kv_reserve=kv_reservation(spec, replica, stage),
            )
            actors.append(spawn_stage_actor(config, stage.device))
        actors_by_replica.append(actors)
    everyone = [a for actors in actors_by_replica for a in actors]
    try:
        infos = ray.get([a.info.remote() for a in everyone])
    except BaseException:  # includes KeyboardInterrupt at start: no actor may outlive it
        for actor in everyone:
            ray.kill(actor)
        raise
    memory_gb = device_memory_gb(plan) if options.enforce_device_memory else {}
    capacities = plan_capacities(plan)
    runners = []
    for replica, actors in zip(plan.replicas, actors_by_replica, strict=True):
        mine, infos = infos[: len(actors)], infos[len(actors) :]
        try:  # emulated devices too: a stage that does not fit fails here, not by swapping
            check_fits(replica, mine, spec, device_memory_gb(plan))
        except InputError:
            for actor in everyone:
                ray.kill(actor)
            raise
        # every replica gets its decoder KV budget: a role switch may make it decode
        budget = kv_budget_tokens(replica.stages, mine, memory_gb)
        runner = ReplicaRunner(replica, actors, metrics, budget, capacities[replica.id], chunk_tokens)
        if generation:  # labels (metrics, errors) stay unique across plans
            runner.label = f"{replica.id}@g{generation}"
        runners.append(runner)
    log.info(
        "plan generation %d: %d stage actors of %d replicas loaded in %.1f s",
        generation,
        n_actors,
        len(runners),
        time.monotonic() - t0,
    )
    return runners

"""A running deployment of a plan: stage actors, replica runners, router, one request lifecycle.

`Deployment.launch` starts one stage actor per (replica, device) — pinned to its device's Ray
resource — and waits until every actor has loaded its weights. `Deployment.submit` then runs a
request: route to a prefill replica (JSQ), prefill (first token), route to a decoder, hand the KV
over (unless co-located), and let the decoder's loop generate. Tokens reach the caller through
`Generation.events`; a caller that goes away calls `Generation.cancel()` and the KV is freed on
every stage that holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.plan.types import Plan, Stage
from e2llm.runtime.actors import StageConfig, spawn_stage_actor
from e2llm.runtime.cluster import torch_threads_per_actor
from e2llm.runtime.generation import Generation
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.replica import ReplicaRunner, hand_off
from e2llm.runtime.router import Router


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
        free = gb * 2**30 - info["weight_bytes"] - RUNTIME_OVERHEAD_BYTES
        budgets.append(max(0, int(free // max(1, info["kv_bytes_per_token"]))))
    return min(budgets) if budgets else None


class Deployment:
    def __init__(self, plan: Plan, runners: Sequence[ReplicaRunner], metrics: ServingMetrics):
        self.plan = plan
        self.runners = list(runners)
        self.metrics = metrics
        self.router = Router(self.runners, plan.scheduler)
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def launch(cls, plan: Plan, model_path: str, options: LaunchOptions = LaunchOptions()) -> Deployment:
        """Start every stage actor (Ray must be initialised) and wait for their weights."""
        import ray

        n_actors = sum(len(r.stages) for r in plan.replicas)
        threads = options.threads or torch_threads_per_actor(n_actors)
        metrics = ServingMetrics()
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
                    dtype=options.dtype,
                    threads=threads,
                )
                actors.append(spawn_stage_actor(config, stage.device))
            actors_by_replica.append(actors)
        everyone = [a for actors in actors_by_replica for a in actors]
        try:
            infos = ray.get([a.info.remote() for a in everyone])
        except BaseException:
            for actor in everyone:
                ray.kill(actor)
            raise
        devices = [d for d in plan.cluster.get("devices", []) if isinstance(d, dict)]
        if not options.enforce_device_memory:
            devices = []
        memory_gb = {str(d.get("name")): d.get("memory_gb") for d in devices}
        runners = []
        for replica, actors in zip(plan.replicas, actors_by_replica, strict=True):
            mine, infos = infos[: len(actors)], infos[len(actors) :]
            budget = kv_budget_tokens(replica.stages, mine, memory_gb) if replica.does_decode else None
            runners.append(ReplicaRunner(replica, actors, metrics, budget))
        return cls(plan, runners, metrics)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the decode loops; call from inside the serving event loop."""
        for runner in self.runners:
            runner.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for runner in self.runners:
            await runner.stop()

    def kill_actors(self) -> None:
        import ray

        for runner in self.runners:
            for actor in runner.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)

    # ---- requests ------------------------------------------------------------------------
    def submit(self, gen: Generation) -> None:
        """Start serving `gen` in the background; results arrive on `gen.events`."""
        task = asyncio.get_running_loop().create_task(self._serve(gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, gen: Generation) -> None:
        prefiller = self.router.pick_prefill(len(gen.prompt_ids))
        joined = False
        try:
            first = await prefiller.prefill(gen)
            if first is None:  # client left while queued: nothing computed, nothing to free
                return
            try:
                gen.add_token(first)
                if gen.done:
                    prefiller.free([gen.seq_id])
                    return
                decoder = self.router.pick_decoder(prefiller)
                install = (
                    None
                    if decoder is prefiller
                    else functools.partial(hand_off, gen, prefiller, decoder, self.metrics)
                )
                joined = await decoder.join(gen, install)
                if not joined:
                    prefiller.free([gen.seq_id])
            except BaseException:
                prefiller.free([gen.seq_id])
                raise
            finally:
                prefiller.release_kv()
        except asyncio.CancelledError:  # shutting down, maybe mid-prefill
            prefiller.free([gen.seq_id])
            raise
        except Exception as e:  # a stage failed: report it to this client, keep serving others
            prefiller.free([gen.seq_id])
            gen.fail(f"generation failed: {e}")
        finally:
            if not joined:  # the decoder records the requests it finishes
                self.metrics.request_finished(gen)

    # ---- observability -------------------------------------------------------------------
    async def stage_stats(self) -> list[dict[str, Any]]:
        """Live figures from every stage actor, one row per (replica, device)."""
        rows = []
        for runner in self.runners:
            stats = await asyncio.gather(*(a.stats.remote() for a in runner.actors))
            for stage, s in zip(runner.replica.stages, stats, strict=True):
                rows.append({"replica": runner.replica.id, "device": stage.device, **s})
        return rows

    def queue_lengths(self) -> dict[str, int]:
        return {
            "prefill": sum(r.prefill_waiting for r in self.runners),
            "decode": sum(r.decode_waiting for r in self.runners),
            "active": sum(r.decode_active for r in self.runners),
        }

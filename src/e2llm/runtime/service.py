"""A running deployment of a plan: stage actors, replica runners, router, one request lifecycle.

`Deployment.launch` starts one stage actor per (replica, device) — pinned to its device's Ray
resource — and waits until every actor has loaded its weights. `Deployment.submit` then runs a
request: route to a prefill replica (JSQ), prefill (first token), route to a decoder, hand the KV
over (unless co-located), and let the decoder's loop generate. Tokens reach the caller through
`Generation.events`; a caller that goes away calls `Generation.cancel()` and the KV is freed on
every stage that holds it.

Device loss: when a Ray call fails because a stage actor is gone (its process or node died), the
replica that owned it is marked lost (the router skips it from then on) and the request is
migrated: re-prefilled, prompt plus the tokens generated so far, on a live replica, at most
`MAX_MIGRATIONS` times; the stream goes on from the next token, so nothing is repeated or skipped.
A request that cannot be placed (no live replica of a needed role, or out of migrations) fails
with an explicit error (HTTP 503 / an SSE error event); none is dropped silently. `/health`
lists the lost replicas. The plan is not re-planned: the deployment serves on with the replicas
that remain until it is restarted.
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
from e2llm.runtime.replica import ReplicaLost, ReplicaRunner, hand_off, is_actor_loss, lost_actor_id
from e2llm.runtime.router import NoLiveReplica, Router

MAX_MIGRATIONS = 2  # re-prefills of one request after replica losses, before it fails


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
        self.closing = False
        self.migrations = 0  # requests moved to another replica after a loss

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
        self.closing = True
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

    def unavailable_reason(self) -> str | None:
        """Why new requests are refused right now (503), or None while serving."""
        if self.closing:
            return "shutting down"
        return self.router.unavailable_reason()

    # ---- requests ------------------------------------------------------------------------
    def submit(self, gen: Generation) -> None:
        """Start serving `gen` in the background; results arrive on `gen.events`."""
        task = asyncio.get_running_loop().create_task(self._serve(gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, gen: Generation) -> None:
        recorded = False  # a decoder that saw the request to its end recorded it
        try:
            while True:
                try:
                    recorded = await self._serve_once(gen)
                    return
                except ReplicaLost as e:
                    if gen.done:
                        return
                    if gen.migrations >= MAX_MIGRATIONS:
                        gen.fail(f"generation failed: {e}; no migrations left", 503)
                        return
                    gen.migrations += 1
                    self.migrations += 1
        except NoLiveReplica as e:
            gen.fail(f"generation failed: {e}", 503)
        finally:
            if not recorded:
                self.metrics.request_finished(gen)

    async def _serve_once(self, gen: Generation) -> bool:
        """Serve `gen` (from its current context) on one prefill and one decode replica; True if
        the decoder saw it to its end. A lost actor becomes `ReplicaLost`."""
        prefiller = self.router.pick_prefill(len(gen.context_ids))
        decoder = None
        joined = False
        try:
            first = await prefiller.prefill(gen)
            if first is None:  # client left while queued: nothing computed, nothing to free
                return False
            try:
                gen.add_token(first)
                if gen.done:
                    prefiller.free([gen.seq_id])
                    return False
                decoder = self.router.pick_decoder(prefiller)
                install = (
                    None
                    if decoder is prefiller
                    else functools.partial(hand_off, gen, prefiller, decoder, self.metrics)
                )
                joined = await decoder.join(gen, install)
                if not joined:
                    prefiller.free([gen.seq_id])
                return joined
            except BaseException:
                prefiller.free([gen.seq_id])
                raise
            finally:
                prefiller.release_kv()
        except asyncio.CancelledError:  # shutting down, maybe mid-prefill
            prefiller.free([gen.seq_id])
            raise
        except (ReplicaLost, NoLiveReplica):
            raise
        except Exception as e:
            if is_actor_loss(e):
                raise self._lost(e, [r for r in (prefiller, decoder) if r is not None]) from e
            # a stage failed: report it to this client, keep serving others
            prefiller.free([gen.seq_id])
            gen.fail(f"generation failed: {e}")
            return False

    def _lost(self, error: BaseException, suspects: Sequence[ReplicaRunner]) -> ReplicaLost:
        """Mark the replica owning the dead actor lost (the suspects if Ray does not name it)."""
        actor_id = lost_actor_id(error)
        owners = [r for r in self.runners if actor_id is not None and r.owns_actor(actor_id)]
        reason = f"stage actor died: {type(error).__name__}"
        for runner in owners or suspects:
            if runner.alive:
                runner.mark_lost(reason)
        return ReplicaLost((owners or list(suspects))[0].label, reason)

    # ---- observability -------------------------------------------------------------------
    async def stage_stats(self) -> list[dict[str, Any]]:
        """Live figures from every stage actor, one row per (replica, device)."""
        rows = []
        for runner in self.runners:
            if not runner.alive:
                continue
            try:
                stats = await asyncio.gather(*(a.stats.remote() for a in runner.actors))
            except Exception as e:
                if not is_actor_loss(e):
                    raise
                self._lost(e, [runner])
                continue
            for stage, s in zip(runner.replica.stages, stats, strict=True):
                rows.append({"replica": runner.replica.id, "device": stage.device, **s})
        return rows

    def lost_replicas(self) -> list[dict[str, Any]]:
        """The replicas out of service, for `/health`."""
        return [
            {"replica": r.replica.id, "devices": [s.device for s in r.replica.stages], "reason": r.lost}
            for r in self.runners
            if not r.alive
        ]

    def queue_lengths(self) -> dict[str, int]:
        return {
            "prefill": sum(r.prefill_waiting for r in self.runners),
            "decode": sum(r.decode_waiting for r in self.runners),
            "active": sum(r.decode_active for r in self.runners),
        }

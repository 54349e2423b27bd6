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
lists the lost replicas.

Re-planning: 1 s after the last loss (or on `POST /admin/replan`) the planner runs again on the
plan's embedded cluster minus the lost replicas' devices (`e2llm.runtime.replan`); the new plan's
actors start off the event loop while the old plan serves on, then new requests go to the new
plan (generation + 1, replica labels `ID@gN`) and the old replicas are retired once idle. A device
left out comes back with the next re-plan. Hand-written plans (no embedded cluster) are not
re-planned; they serve on with the replicas that remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES
from e2llm.errors import InputError
from e2llm.plan.types import Plan, Stage
from e2llm.runtime.actors import StageConfig, spawn_stage_actor
from e2llm.runtime.cluster import advertised_devices, torch_threads_per_actor
from e2llm.runtime.generation import Generation
from e2llm.runtime.memory import check_fits, kv_reservation, plan_spec
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.plans import plan_devices
from e2llm.runtime.precision import stage_precision
from e2llm.runtime.replan import can_replan, replanned
from e2llm.runtime.replica import ReplicaLost, ReplicaRunner, hand_off, is_actor_loss, lost_actor_id
from e2llm.runtime.router import NoLiveReplica, Router

MAX_MIGRATIONS = 2  # re-prefills of one request after replica losses, before it fails
REPLAN_DEBOUNCE_S = 1.0  # re-plan this long after the last replica loss
RETIRE_TIMEOUT_S = 120.0  # the old plan's replicas get this long to finish their requests
NO_REPLAN = "the plan embeds no cluster and model spec: re-planning is not possible"


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


def start_runners(
    plan: Plan, model_path: str, options: LaunchOptions, metrics: ServingMetrics, generation: int
) -> list[ReplicaRunner]:
    """Start the plan's stage actors (Ray must be initialised), wait for their weights and wrap
    each replica in a runner (not started). Blocks: call it off the event loop while serving."""
    import ray

    n_actors = sum(len(r.stages) for r in plan.replicas)
    threads = options.threads or torch_threads_per_actor(n_actors)
    precision = stage_precision(plan.model_spec, options.dtype, options.torch_device)
    spec = plan_spec(plan.model_spec)
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
    except BaseException:
        for actor in everyone:
            ray.kill(actor)
        raise
    devices = [d for d in plan.cluster.get("devices", []) if isinstance(d, dict)]
    device_memory = {str(d.get("name")): d.get("memory_gb") for d in devices}
    memory_gb = device_memory if options.enforce_device_memory else {}
    runners = []
    for replica, actors in zip(plan.replicas, actors_by_replica, strict=True):
        mine, infos = infos[: len(actors)], infos[len(actors) :]
        try:
            check_fits(replica, mine, spec, device_memory)
        except InputError:
            for actor in everyone:
                ray.kill(actor)
            raise
        budget = kv_budget_tokens(replica.stages, mine, memory_gb) if replica.does_decode else None
        runner = ReplicaRunner(replica, actors, metrics, budget)
        if generation:  # labels (metrics, errors) stay unique across plans
            runner.label = f"{replica.id}@g{generation}"
        runners.append(runner)
    return runners


class Deployment:
    def __init__(self, plan: Plan, runners: Sequence[ReplicaRunner], metrics: ServingMetrics):
        self.plan = plan
        self.runners = list(runners)
        self.metrics = metrics
        self.router = Router(self.runners, plan.scheduler)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.migrations = 0  # requests moved to another replica after a loss
        self.model_path, self.options = "", LaunchOptions()  # what new plans' actors load
        # Re-planning (see `replan`): the full cluster stays the base, so a device left out by
        # one re-plan is taken back by the next one once it is available again.
        self.generation = 0
        self.replanning = False
        self.replan_error: str | None = None if can_replan(plan) else NO_REPLAN
        self.last_switch_s: float | None = None  # loss (or request) -> new plan serving
        self._cluster = plan.cluster
        self._first_devices = plan_devices(plan)
        self._retiring: list[ReplicaRunner] = []  # old plan's replicas finishing their work
        self._replan_lock = asyncio.Lock()
        self._replan_due = 0.0
        self._replan_task: asyncio.Task[None] | None = None

    @classmethod
    def launch(cls, plan: Plan, model_path: str, options: LaunchOptions = LaunchOptions()) -> Deployment:
        """Start every stage actor (Ray must be initialised) and wait for their weights."""
        metrics = ServingMetrics()
        deployment = cls(plan, start_runners(plan, model_path, options, metrics, 0), metrics)
        deployment.model_path, deployment.options = model_path, options
        return deployment

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the decode loops; call from inside the serving event loop."""
        for runner in self.runners:
            runner.start()

    async def stop(self) -> None:
        self.closing = True
        if self._replan_task is not None:
            self._replan_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for runner in self.runners + self._retiring:
            await runner.stop()

    def kill_actors(self) -> None:
        import ray

        for runner in self.runners + self._retiring:
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
                    if any(r.label == e.label and not r.alive for r in self.runners):
                        self._schedule_replan()
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
        everyone = self.runners + self._retiring
        owners = [r for r in everyone if actor_id is not None and r.owns_actor(actor_id)]
        reason = f"stage actor died: {type(error).__name__}"
        for runner in owners or suspects:
            if runner.alive:
                runner.mark_lost(reason)
                if runner in self.runners:
                    self._schedule_replan()
        return ReplicaLost((owners or list(suspects))[0].label, reason)

    # ---- re-planning ---------------------------------------------------------------------
    def _schedule_replan(self) -> None:
        """Re-plan `REPLAN_DEBOUNCE_S` after the last loss: losses close together (a node with
        several devices) make one re-plan."""
        if self.replan_error == NO_REPLAN or self.closing:
            return
        loop = asyncio.get_running_loop()
        self._replan_due = loop.time() + REPLAN_DEBOUNCE_S
        if self._replan_task is None or self._replan_task.done():
            self._replan_task = loop.create_task(self._replan_when_due(loop.time()))

    async def _replan_when_due(self, since: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while (wait := self._replan_due - loop.time()) > 0:
                await asyncio.sleep(wait)
            due = self._replan_due
            await self.replan(since)
            if self._replan_due == due:  # no loss while re-planning
                return
            since = due - REPLAN_DEBOUNCE_S

    async def replan(self, since: float | None = None) -> bool:
        """Plan again on the cluster's devices minus those of lost replicas (and any no Ray node
        advertises), start the new plan's actors off the event loop, then route new requests to
        it; requests already on the old plan's replicas finish there (`_retire`). False (with
        `replan_error` set) when no new plan could be made or started: serving goes on as is."""
        if self.replan_error == NO_REPLAN:
            return False
        loop = asyncio.get_running_loop()
        since = loop.time() if since is None else since
        async with self._replan_lock:
            self.replanning = True
            try:
                leave_out = {s.device for r in self.runners if not r.alive for s in r.replica.stages}
                advertised = await asyncio.to_thread(advertised_devices)
                plan = await asyncio.to_thread(replanned, self.plan, self._cluster, leave_out, advertised)
                gen = self.generation + 1
                runners = await asyncio.to_thread(
                    start_runners, plan, self.model_path, self.options, self.metrics, gen
                )
            except Exception as e:
                self.replan_error = f"re-planning failed: {type(e).__name__}: {e}"
                return False
            finally:
                self.replanning = False
            if self.closing:  # shut down while the new actors loaded: they serve nothing
                for runner in runners:
                    runner.mark_lost("shutting down")
                return False
            for runner in runners:
                runner.start()
            old = self.runners
            self.plan, self.runners, self.generation = plan, runners, gen
            self.router = Router(runners, plan.scheduler)
            self.replan_error = None
            self.last_switch_s = loop.time() - since
            self._retiring.extend(old)
            task = loop.create_task(self._retire(old, gen))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True

    async def _retire(self, old: list[ReplicaRunner], generation: int) -> None:
        """Wait until the old replicas are idle (or `RETIRE_TIMEOUT_S`), then take them out: a
        request still there gets `ReplicaLost` and migrates to the new plan; none is dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETIRE_TIMEOUT_S
        idle_polls = 0
        while idle_polls < 2 and loop.time() < deadline:
            busy = any(
                r.alive and (r.prefill_waiting or r.prefill_tokens_outstanding or r.decode_sequences)
                for r in old
            )
            idle_polls = 0 if busy else idle_polls + 1
            await asyncio.sleep(0.5)
        for runner in old:
            runner.mark_lost(f"replaced by plan generation {generation}")
            await runner.stop()
        self._retiring = [r for r in self._retiring if r not in old]

    def devices_in_use(self) -> list[str]:
        return plan_devices(self.plan)

    def devices_left_out(self) -> list[str]:
        """Devices the first plan used that the current one does not (lost, not yet back)."""
        in_use = set(self.devices_in_use())
        return [d for d in self._first_devices if d not in in_use]

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

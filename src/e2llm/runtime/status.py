"""`GET /v1/status`: the plan, the cluster and live figures of a running deployment, as one JSON.

The dashboard (`/`) polls it; so may any monitoring script. The schema is the pydantic model
`Status` below (documented in docs/serving.md): fields may be added, never renamed.

Rates come in pairs, `Rate(predicted, observed)`: the planner's prediction for the plan's cluster
spec beside what this deployment did over the last `window_s` seconds.
- `prefill_speed` / `decode_speed`: one request's speed while served (prompt tokens per prefill
  second; tokens per second of one sequence in the decode batch, i.e. 1 / mean step time), to
  compare with `prefill_tok_s` / `decode_tok_s_per_request` of the plan;
- `prefill_throughput` / `decode_throughput`: tokens per second of the whole replica now, to
  compare with the capacity the plan predicts (`prefill_capacity_tok_s`, `decode_capacity_tok_s`).
An observed figure is null while the replica did no such work in the window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from e2llm.plan.types import Replica
from e2llm.runtime.events import Event
from e2llm.runtime.metrics import TOKENS_PER_S_WINDOW_S, ReplicaRates
from e2llm.runtime.plan_switch import NO_REPLAN
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.service import Deployment


class DeviceStatus(BaseModel):
    name: str
    memory_gb: float | None  # None: the plan embeds no cluster, only device names
    tflops: float | None
    mem_bandwidth_gbs: float | None
    state: Literal["serving", "lost", "unused"]


class LinkStatus(BaseModel):
    a: str
    b: str
    bandwidth_mbps: float
    latency_ms: float


class NetworkStatus(BaseModel):
    bandwidth_mbps: float | None  # between every pair without an override
    latency_ms: float | None
    links: list[LinkStatus]  # per-pair overrides


class ClusterStatus(BaseModel):
    devices: list[DeviceStatus]
    network: NetworkStatus


class StageStatus(BaseModel):
    device: str
    start: int  # layers [start, end)
    end: int
    embedding: bool
    lm_head: bool
    memory_gb: float  # planned use (weights + KV at the planned concurrency); 0: unknown
    kv_bytes: int | None  # KV cache held now (None: the replica is out of service)
    sequences: int | None


class Rate(BaseModel):
    predicted: float | None  # tokens/s
    observed: float | None


class ReplicaStatus(BaseModel):
    id: int
    label: str  # "ID", or "ID@gN" for a replica of re-made plan generation N
    role: str  # PREFILL, DECODER, COLOCATED (MIXED once roles adapt)
    state: Literal["serving", "draining", "lost"]  # draining: of an older plan, finishing its work
    reason: str | None  # why it is lost
    concurrency: int  # planned decode batch
    bottleneck_device: str
    stages: list[StageStatus]
    prefill_queue: int  # prompts waiting to be prefilled
    prefill_tokens_outstanding: int  # their tokens, plus those being prefilled
    decode_queue: int  # prefilled requests waiting for a decode slot
    batch: int  # sequences in the decode batch now
    kv_tokens_in_use: int  # decode: tokens of KV its admitted sequences hold
    kv_budget_tokens: int | None  # decode: what its devices' memory allows (None: only concurrency)
    prefill_speed: Rate
    decode_speed: Rate
    prefill_throughput: Rate
    decode_throughput: Rate
    prompt_tokens: int  # since start
    generated_tokens: int


class PlanStatus(BaseModel):
    system: str
    model: str
    generation: int  # 0 at start, + 1 at each switch to a re-made plan
    objective: float | None
    objective_kind: str
    scheduler: str
    unused_devices: list[str]


class Totals(BaseModel):
    requests: dict[str, int]  # finished, by outcome (stop, length, error, cancelled)
    migrations: int
    tokens_per_s: float  # generated, whole deployment, over the window
    prefill_queue: int
    decode_queue: int
    batch: int


class Status(BaseModel):
    model: str
    status: Literal["ok", "degraded"]
    uptime_s: float
    time_s: float  # Unix time of this answer
    window_s: float  # span of the observed rates
    replanning: bool
    can_replan: bool  # false for a hand-written plan (no embedded cluster, model, workload, parameters)
    replan_error: str | None  # why the last re-plan failed, or why none can run
    plan: PlanStatus
    cluster: ClusterStatus
    replicas: list[ReplicaStatus]
    totals: Totals
    events: list[Event]  # oldest first, at most the last 200


def _cluster(deployment: Deployment) -> ClusterStatus:
    """The cluster the plan was made for, each device with its state now. A plan without an
    embedded cluster still lists its devices, with unknown specs."""
    fleet, first = deployment.fleet, deployment.plans.first_devices
    plan = fleet.plan
    in_use = fleet.devices_in_use()
    serving = set(in_use) - {d for r in fleet.lost_replicas() for d in r["devices"]}
    cluster = plan.cluster  # typed when the plan was read
    names = list(cluster.names) if cluster else [*first, *plan.unused_devices]
    names += [d for d in in_use if d not in names]

    def state(name: str) -> Literal["serving", "lost", "unused"]:
        if name in serving:
            return "serving"
        return "lost" if name in first else "unused"

    devices = []
    for name in dict.fromkeys(names):
        spec = cluster.device(name) if cluster and name in cluster.names else None
        devices.append(
            DeviceStatus(
                name=name,
                memory_gb=spec.memory_gb if spec else None,
                tflops=spec.tflops if spec else None,
                mem_bandwidth_gbs=spec.mem_bandwidth_gbs if spec else None,
                state=state(name),
            )
        )
    links = [
        LinkStatus(a=a, b=b, bandwidth_mbps=link.bandwidth_mbps, latency_ms=link.latency_ms)
        for pair, link in (cluster.links.items() if cluster else ())
        for a, b in [sorted(pair)]
    ]
    network = NetworkStatus(
        bandwidth_mbps=cluster.default_link.bandwidth_mbps if cluster else None,
        latency_ms=cluster.default_link.latency_ms if cluster else None,
        links=links,
    )
    return ClusterStatus(devices=devices, network=network)


def _per_s(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 else None


def _replica(
    runner: ReplicaRunner,
    draining: bool,
    rates: ReplicaRates,
    stage_rows: Mapping[tuple[str, str], Mapping[str, Any]],
) -> ReplicaStatus:
    r: Replica = runner.replica
    pre_tokens, pre_busy, _ = rates.prefill.sums()
    dec_tokens, dec_busy, steps = rates.decode.sums()
    window = rates.prefill.span_s
    stages = []
    for s in r.stages:
        row = stage_rows.get((runner.label, s.device)) if runner.alive else None
        stages.append(
            StageStatus(
                device=s.device,
                start=s.start,
                end=s.end,
                embedding=s.embedding,
                lm_head=s.lm_head,
                memory_gb=s.memory_gb,
                kv_bytes=int(row["kv_bytes"]) if row else None,
                sequences=int(row["sequences"]) if row else None,
            )
        )
    state: Literal["serving", "draining", "lost"] = (
        "lost" if not runner.alive else "draining" if draining else "serving"
    )
    return ReplicaStatus(
        id=r.id,
        label=runner.label,
        role=r.role.value,
        state=state,
        reason=runner.lost,
        concurrency=r.concurrency,
        bottleneck_device=r.bottleneck_device,
        stages=stages,
        prefill_queue=runner.prefill_waiting,
        prefill_tokens_outstanding=runner.prefill_tokens_outstanding,
        decode_queue=runner.decode_waiting,
        batch=runner.decode_active,
        kv_tokens_in_use=runner.kv_tokens_in_use,
        kv_budget_tokens=runner.kv_budget_tokens,
        prefill_speed=Rate(predicted=r.prefill_tok_s, observed=_per_s(pre_tokens, pre_busy)),
        # each sequence in the batch gains one token per step
        decode_speed=Rate(predicted=r.decode_tok_s_per_request, observed=_per_s(steps, dec_busy)),
        prefill_throughput=Rate(
            predicted=r.prefill_capacity_tok_s, observed=pre_tokens / window if pre_tokens else None
        ),
        decode_throughput=Rate(
            predicted=r.decode_capacity_tok_s, observed=dec_tokens / window if dec_tokens else None
        ),
        prompt_tokens=rates.prefill.total_tokens,
        generated_tokens=rates.decode.total_tokens,
    )


def deployment_status(
    deployment: Deployment, stage_rows: Sequence[Mapping[str, Any]], model: str, started_s: float
) -> Status:
    """The status of `deployment` now; `stage_rows` are its stage actors' live figures
    (`Deployment.stage_stats()`)."""
    by_stage = {(str(row["label"]), str(row["device"])): row for row in stage_rows}
    metrics, fleet, plans = deployment.metrics, deployment.fleet, deployment.plans
    runners = [(r, False) for r in fleet.runners] + [(r, True) for r in fleet.retiring]
    replicas = [_replica(r, draining, metrics.rates[r.label], by_stage) for r, draining in runners]
    plan = fleet.plan
    queues = fleet.queue_lengths()
    degraded = fleet.lost_replicas() or plans.devices_left_out()
    return Status(
        model=model,
        status="degraded" if degraded else "ok",
        uptime_s=round(time.time() - started_s, 3),
        time_s=time.time(),
        window_s=TOKENS_PER_S_WINDOW_S,
        replanning=plans.replanning,
        can_replan=plans.error != NO_REPLAN,
        replan_error=plans.error,
        plan=PlanStatus(
            system=plan.system,
            model=plan.model,
            generation=fleet.generation,
            objective=plan.objective if plan.objective == plan.objective else None,  # NaN: none
            objective_kind=plan.objective_kind,
            scheduler=plan.scheduler,
            unused_devices=list(plan.unused_devices),
        ),
        cluster=_cluster(deployment),
        replicas=replicas,
        totals=Totals(
            requests=metrics.requests_by_outcome(),
            migrations=deployment.requests.migrations,
            tokens_per_s=metrics.tokens_per_s(),
            prefill_queue=queues["prefill"],
            decode_queue=queues["decode"],
            batch=queues["active"],
        ),
        events=metrics.events.recent(),
    )

"""Small hand-made clusters, models and plans with round-number timings."""

from __future__ import annotations

from dataclasses import dataclass

from e2llm.cost.model import CostModel
from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_spec import ModelSpec

# 4 layers; KV = 2 * 1 head * 64 dims * 2 bytes = 256 bytes per token per layer; hidden 50, so a
# hop of n tokens moves 100 n bytes.
TINY = ModelSpec(
    name="tiny", n_layers=4, hidden=50, n_heads=1, n_kv_heads=1, head_dim=64, intermediate=100, vocab=1000
)
# 8 Mbit/s = 1e6 bytes/s, 1 ms latency
LINK = Link(bandwidth_mbps=8.0, latency_ms=1.0)


@dataclass(frozen=True)
class LinearTimes:
    """prefill: `prefill_s_per_token` per token per layer; decode: `decode_s` per layer per step,
    plus `decode_s_per_seq` per extra sequence in the batch; head: `head_s_per_row` per row."""

    prefill_s_per_token: float = 0.001
    decode_s: float = 0.01
    decode_s_per_seq: float = 0.0
    head_s_per_row: float = 0.005

    def layer_prefill_s(self, tokens: int) -> float:
        return self.prefill_s_per_token * tokens

    def layer_decode_s(self, batch: int, context: int) -> float:
        return self.decode_s + self.decode_s_per_seq * (batch - 1)

    def head_s(self, tokens: int) -> float:
        return self.head_s_per_row * tokens

    def embed_s(self, tokens: int) -> float:
        return 0.0


def cluster(names: list[str], memory_gb: float = 2.0) -> Cluster:
    return Cluster(
        devices=tuple(Device(n, memory_gb=memory_gb, tflops=1.0, mem_bandwidth_gbs=100.0) for n in names),
        default_link=LINK,
    )


def cost_model(
    names: list[str], times: LinearTimes | None = None, memory_gb: float = 2.0, model: ModelSpec = TINY
) -> CostModel:
    t = times or LinearTimes()
    return CostModel(model=model, cluster=cluster(names, memory_gb), times=dict.fromkeys(names, t))


def replica(rid: int, role: Role, cuts: list[tuple[str, int, int]], concurrency: int = 1) -> Replica:
    last = len(cuts) - 1
    stages = tuple(
        Stage(device=d, start=a, end=b, embedding=i == 0, lm_head=i == last)
        for i, (d, a, b) in enumerate(cuts)
    )
    return Replica(id=rid, role=role, stages=stages, concurrency=concurrency)


def plan(*replicas: Replica, scheduler: str = "jsq") -> Plan:
    return Plan(
        system="test",
        model="tiny",
        objective=0.0,
        objective_kind="bottleneck_s",
        replicas=tuple(replicas),
        scheduler=scheduler,
    )

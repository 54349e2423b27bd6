"""The plan: which devices form each replica, which layers each device runs, and each replica's role.

Plan JSON is a contract (see DESIGN "Plan JSON"): fields may be added, never renamed. A plan also
embeds the cluster and the model spec it was made for, so `e2llm simulate plan.json` and
`e2llm serve plan.json` need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    PREFILL = "PREFILL"
    DECODER = "DECODER"
    # Both phases on one replica, decode batches carrying chunks of prompts under a token budget
    # per iteration (Sarathi-style); chosen by the planner or the role controller. sim/mixed.py
    # defines what it does at run time.
    MIXED = "MIXED"
    COLOCATED = "COLOCATED"  # both phases on one replica, whole prompts first (baselines)


@dataclass(frozen=True, slots=True)
class Stage:
    """One device's share of a replica: decoder layers `[start, end)` (half-open)."""

    device: str
    start: int
    end: int
    embedding: bool = False
    lm_head: bool = False
    memory_gb: float = 0.0  # planned use: weights + KV at the planned concurrency + overhead

    @property
    def n_layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Replica:
    """A pipeline holding one full copy of the model, stages in pipeline order."""

    id: int
    role: Role
    stages: tuple[Stage, ...]
    concurrency: int = 1  # decode batch size (DECODER / MIXED / COLOCATED); 1 for PREFILL
    prefill_tok_s: float | None = None  # one prompt's speed: input tokens / its prefill time
    decode_tok_s_per_request: float | None = None
    bottleneck_device: str = ""
    # What the whole replica sustains in its role (pipelined prompts / all `concurrency`
    # sequences), tokens per second; the planner's objective is built from these.
    prefill_capacity_tok_s: float | None = None
    decode_capacity_tok_s: float | None = None

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.stages)

    @property
    def does_prefill(self) -> bool:
        return self.role in (Role.PREFILL, Role.MIXED, Role.COLOCATED)

    @property
    def does_decode(self) -> bool:
        return self.role in (Role.DECODER, Role.MIXED, Role.COLOCATED)


@dataclass(frozen=True, slots=True)
class PlannerStats:
    evaluations: int = 0
    seconds: float = 0.0
    seed: int | None = None
    generations: int = 0


@dataclass(frozen=True)
class Plan:
    system: str
    model: str
    objective: float  # lower is better
    objective_kind: str  # "bottleneck_s" or "neg_max_rate"
    replicas: tuple[Replica, ...]
    unused_devices: tuple[str, ...] = ()
    planner: PlannerStats = field(default_factory=PlannerStats)
    scheduler: str = "jsq"  # request routing the simulator and runtime apply: "jsq" | "splitwise"
    cluster: dict[str, Any] = field(default_factory=dict)  # the cluster, as written by specs
    model_spec: dict[str, Any] = field(default_factory=dict)  # the ModelSpec fields

    @property
    def prefill_replicas(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if r.does_prefill)

    @property
    def decode_replicas(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if r.does_decode)

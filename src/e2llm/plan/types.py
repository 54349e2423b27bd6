"""The plan: which devices form each replica, which layers each device runs, and each replica's role.

Plan JSON is a contract (see DESIGN "Plan JSON"): fields may be added, never renamed. A plan is
self-sufficient: it embeds the cluster, the model spec and the workload shape it was made for and
the planner's parameters, so `e2llm simulate plan.json` and `e2llm serve plan.json` need nothing
else, and re-planning (after a device loss) asks the planner the same question on fewer devices.
Hand-written plans may leave all of these out (`None`).

The choices a plan names are `StrEnum`s: their values are the JSON and CLI spellings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.device import Cluster
from e2llm.specs.model_spec import ModelSpec


class Role(StrEnum):
    PREFILL = "PREFILL"
    DECODER = "DECODER"
    # Both phases on one replica, decode batches carrying chunks of prompts under a token budget
    # per iteration (Sarathi-style); chosen by the planner or the role controller. sim/mixed.py
    # defines what it does at run time.
    MIXED = "MIXED"
    COLOCATED = "COLOCATED"  # both phases on one replica, whole prompts first (baselines)


class Scheduler(StrEnum):
    """Request routing the simulator and the runtime apply (see `sim/router.py`)."""

    JSQ = "jsq"  # the method's: shortest estimated wait
    SPLITWISE = "splitwise"  # Splitwise's cluster scheduler


class ObjectiveKind(StrEnum):
    """What a plan's `objective` number measures (lower is better for both)."""

    BOTTLENECK_S = "bottleneck_s"  # seconds by which the slower phase exceeds the arrival interval
    NEG_MAX_RATE = "neg_max_rate"  # the sustainable request rate, negated


class Objective(StrEnum):
    """What a planner optimises (`--objective`)."""

    BOTTLENECK = "bottleneck"  # the method's
    MAX_RATE = "max_rate"

    @property
    def kind(self) -> ObjectiveKind:
        return ObjectiveKind.BOTTLENECK_S if self is Objective.BOTTLENECK else ObjectiveKind.NEG_MAX_RATE


GA_BUDGET = 200  # default GA generations (`--budget`)


@dataclass(frozen=True, slots=True)
class PlannerParams:
    """What a planner is asked besides the cost model and the workload shape. A plan carries
    them so that re-planning asks the same question."""

    seed: int = 1  # the GA's random stream
    objective: Objective = Objective.BOTTLENECK
    exhaustive: bool = False  # the exhaustive oracle instead of the GA (small clusters)
    # may the planner assign MIXED replicas (our extension; it picks one only where it scores
    # better)? False: PREFILL / DECODER only, the method's roles (`--mixed off`). A plan JSON
    # written before the field existed reads as False: its planner could not assign MIXED
    mixed: bool = True
    budget: int = GA_BUDGET  # the GA's budget: generations at most (it stops early once it stops improving)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", Objective(self.objective))  # code may pass "max_rate"


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
    """What the planner did (as opposed to what it was asked: `PlannerParams`)."""

    evaluations: int = 0
    seconds: float = 0.0
    generations: int = 0


@dataclass(frozen=True)
class Plan:
    system: str
    model: str
    objective: float  # lower is better
    objective_kind: ObjectiveKind
    replicas: tuple[Replica, ...]
    unused_devices: tuple[str, ...] = ()
    planner: PlannerStats = field(default_factory=PlannerStats)
    scheduler: Scheduler = Scheduler.JSQ
    # What the plan was made for (None in hand-written plans; see the module docstring).
    cluster: Cluster | None = None
    model_spec: ModelSpec | None = None
    workload: WorkloadShape | None = None
    params: PlannerParams | None = None
    # The planner's predictions (None: not computed): the request rate the plan sustains by its
    # capacity model, the upper bound no plan exceeds (`plan.bound`), the mean latency.
    rate_rps: float | None = None
    bound_rps: float | None = None
    latency_s: float | None = None

    def __post_init__(self) -> None:
        # Plans built in code may name the choices by their JSON spelling.
        object.__setattr__(self, "objective_kind", ObjectiveKind(self.objective_kind))
        object.__setattr__(self, "scheduler", Scheduler(self.scheduler))

    @property
    def precision(self) -> str | None:
        """The one format of every weight (as `--precision` names it), or None when the parts
        differ (GPT-OSS as published: MXFP4 experts, bf16 elsewhere) or no model spec is embedded."""
        spec = self.model_spec
        if spec is None or (spec.is_moe and spec.weight_precision != spec.expert_precision):
            return None
        return spec.weight_precision

    @property
    def bound_share(self) -> float | None:
        """The plan's sustainable rate as a share of the bound."""
        if self.rate_rps is None or not self.bound_rps:
            return None
        return self.rate_rps / self.bound_rps

    @property
    def can_replan(self) -> bool:
        """Whether the plan embeds what re-planning needs."""
        return None not in (self.cluster, self.model_spec, self.workload, self.params)

    @property
    def prefill_replicas(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if r.does_prefill)

    @property
    def decode_replicas(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if r.does_decode)

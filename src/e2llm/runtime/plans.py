"""Plans as the runtime executes them: checks against the real model, a hand-made fallback,
and the one-screen description `e2llm serve` prints at start.

The runtime runs each replica's stages in the plan's order; the first stage that holds layers
embeds the tokens and the last one applies the final norm and LM head (stages with no layers are
skipped: their devices would only relay). Layer ranges must tile `[0, n_layers)` in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from e2llm.errors import InputError
from e2llm.plan.types import ObjectiveKind, Plan, Replica, Role, Stage


def runnable_plan(plan: Plan, n_layers: int, source: str = "plan") -> Plan:
    """`plan` with each replica's stages normalised for execution (see module docstring);
    a replica whose ranges do not tile `[0, n_layers)` raises `InputError`."""
    replicas = []
    for i, replica in enumerate(plan.replicas):
        stages = [s for s in replica.stages if s.n_layers > 0]
        where = f"{source}: replicas[{i}]"
        expect = 0
        for s in stages:
            if s.start != expect:
                raise InputError(
                    f"{where}.devices",
                    f"layers must tile [0, {n_layers}): {s.device} starts at {s.start}, not {expect}",
                )
            expect = s.end
        if expect != n_layers:
            raise InputError(f"{where}.devices", f"layers end at {expect} but the model has {n_layers}")
        last = len(stages) - 1
        fixed = tuple(replace(s, embedding=j == 0, lm_head=j == last) for j, s in enumerate(stages))
        replicas.append(replace(replica, stages=fixed))
    return replace(plan, replicas=tuple(replicas))


def split_layers(n_layers: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous near-equal `[start, end)` ranges (the first ranges get the extra layers)."""
    n_parts = max(1, min(n_parts, n_layers))
    base, extra = divmod(n_layers, n_parts)
    ranges, start = [], 0
    for i in range(n_parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def hand_plan(devices: Sequence[str], n_layers: int, model: str) -> Plan:
    """A PD plan without the planner: the first half of the devices prefill, the rest decode,
    each replica splitting the layers evenly: a fixed plan for tests of the runtime."""
    if len(devices) < 2:
        raise InputError("cluster", "a PREFILL + DECODER plan needs at least 2 devices", list(devices))
    half = len(devices) // 2
    groups = [(Role.PREFILL, devices[:half]), (Role.DECODER, devices[half:])]
    replicas = []
    for rid, (role, names) in enumerate(groups):
        ranges = split_layers(n_layers, len(names))
        stages = tuple(
            Stage(device=d, start=a, end=b, embedding=j == 0, lm_head=j == len(ranges) - 1)
            for j, (d, (a, b)) in enumerate(zip(names, ranges, strict=False))
        )
        replicas.append(
            Replica(id=rid, role=role, stages=stages, concurrency=1 if role == Role.PREFILL else 16)
        )
    unused = tuple(d for d in devices if all(d not in r.devices for r in replicas))
    return Plan(
        system="hand",
        model=model,
        objective=float("nan"),
        objective_kind=ObjectiveKind.BOTTLENECK_S,
        replicas=tuple(replicas),
        unused_devices=unused,
    )


def describe_plan(plan: Plan) -> str:
    """The plan in a few lines: each replica's role, concurrency and layer ranges per device."""
    head = f"plan: system={plan.system} model={plan.model} replicas={len(plan.replicas)}"
    lines = [f"{head} scheduler={plan.scheduler}"]
    for r in plan.replicas:
        lines.append(f"  {describe_replica(r, pad=True)}")
    if plan.unused_devices:
        lines.append(f"  unused: {', '.join(plan.unused_devices)}")
    return "\n".join(lines)


def describe_replica(r: Replica, pad: bool = False) -> str:
    """One replica on one line: role, concurrency, and each device's layers in pipeline order."""
    parts = []
    for s in r.stages:
        extras = "+emb" if s.embedding else ""
        extras += "+head" if s.lm_head else ""
        parts.append(f"{s.device}[{s.start},{s.end}){extras}")
    conc = f" concurrency={r.concurrency}" if r.does_decode else ""
    role = f"{r.role.value:<9}" if pad else r.role.value
    return f"replica {r.id} {role}{conc}: " + " -> ".join(parts)


def plan_devices(plan: Plan) -> list[str]:
    """Every device the plan runs a stage on, in first-use order."""
    seen: dict[str, None] = {}
    for r in plan.replicas:
        for s in r.stages:
            seen.setdefault(s.device, None)
    return list(seen)

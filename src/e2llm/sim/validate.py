"""Is a plan something the simulator and the runtime can run on this cluster and model? One
InputError if not: `e2llm simulate` and `e2llm serve` both call `check_plan`.

Checked (the scheduler itself is typed when the plan is read): the plan is either all COLOCATED
or has replicas for both phases (PREFILL or MIXED to prefill, DECODER or MIXED to decode); a
splitwise plan has a prompt pool and a token pool (its mixed pool is formed at run time, by
borrowing). Given the cost model (the plan's cluster and model; a hand-written plan served
without one gets the role checks only): every device exists in the cluster and is used once;
each replica's stages cover layers [0, n_layers) contiguously with exactly one embedding and one
LM head; the weights fit each device; a MIXED replica holds the KV of one chunk
(`PolicySettings.chunk_tokens`). `check_serves`: the replicas can hold the KV of at least the
smallest request.
"""

from __future__ import annotations

from collections.abc import Sequence

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.errors import InputError
from e2llm.plan.types import Plan, Replica, Role, Scheduler
from e2llm.sim.state import KvSizer
from e2llm.specs.units import GIB
from e2llm.specs.workload import Request


def check_plan(plan: Plan, cost: CostModel | None, where: str = "plan", chunk_tokens: int = 512) -> None:
    if cost is not None:
        _check_stages(plan, cost, where, chunk_tokens)
    _check_roles(plan, where)


def _check_stages(plan: Plan, cost: CostModel, where: str, chunk_tokens: int) -> None:
    names = set(cost.cluster.names)
    seen: set[str] = set()
    n_layers = cost.model.n_layers
    for r in plan.replicas:
        rw = f"{where}: replica {r.id}"
        layer = 0
        for s in r.stages:
            if s.device not in names:
                raise InputError(f"{rw}", "device not in the plan's cluster", s.device)
            if s.device in seen:
                raise InputError(f"{rw}", "device used by more than one stage", s.device)
            seen.add(s.device)
            if s.start != layer:
                raise InputError(f"{rw}: {s.device}.layers", f"must start at layer {layer}", [s.start, s.end])
            layer = s.end
            need = (
                cost.weight_bytes(s.start, s.end, embedding=s.embedding, lm_head=s.lm_head)
                + RUNTIME_OVERHEAD_BYTES
            )
            have = cost.cluster.device(s.device).memory_bytes
            if need > have:
                raise InputError(
                    f"{rw}: {s.device}",
                    f"weights need {need / GIB:.2f} GiB but the device has {have / GIB:.2f} GiB",
                    [s.start, s.end],
                )
        if layer != n_layers:
            raise InputError(f"{rw}", f"layers must cover [0, {n_layers}) of {cost.model.name}", [0, layer])
        for flag in ("embedding", "lm_head"):
            count = sum(1 for s in r.stages if getattr(s, flag))
            if count != 1:
                raise InputError(f"{rw}", f"needs exactly one stage with {flag}", count)
        if r.role is Role.MIXED and not KvSizer(cost, r).ever_fits(chunk_tokens):
            raise InputError(
                f"{rw}.role",
                f"a MIXED replica must hold the KV of one {chunk_tokens}-token chunk",
                r.role.value,
            )


def _check_roles(plan: Plan, where: str) -> None:
    roles = {r.role for r in plan.replicas}
    if Role.COLOCATED in roles and roles != {Role.COLOCATED}:
        raise InputError(where, "mixes COLOCATED with PREFILL/DECODER/MIXED replicas", sorted(roles))
    if Role.COLOCATED not in roles and not (
        roles & {Role.PREFILL, Role.MIXED} and roles & {Role.DECODER, Role.MIXED}
    ):
        raise InputError(
            where, "needs replicas for both phases (PREFILL or MIXED, DECODER or MIXED)", sorted(roles)
        )
    if plan.scheduler is Scheduler.SPLITWISE and roles != {Role.PREFILL, Role.DECODER}:
        raise InputError(
            f"{where}: scheduler",
            "splitwise needs PREFILL and DECODER replicas only (its mixed pool forms at run time)",
            "splitwise",
        )


def check_serves(plan: Plan, cost: CostModel, requests: Sequence[Request], where: str = "plan") -> None:
    """The prefill replicas must hold the KV of the shortest prompt and the decoders that of the
    smallest request, else nothing completes. (Single requests too large are failed, not refused.)"""
    if not requests:
        return
    prompt = min(r.input_tokens for r in requests)
    _must_hold([r for r in plan.replicas if r.does_prefill], cost, prompt, "prefill replica", where)
    smallest = min(r.input_tokens + r.output_tokens for r in requests)
    _must_hold([r for r in plan.replicas if r.does_decode], cost, smallest, "decoder", where)


def _must_hold(replicas: Sequence[Replica], cost: CostModel, tokens: int, kind: str, where: str) -> None:
    if any(KvSizer(cost, r).ever_fits(tokens) for r in replicas):
        return
    worst = replicas[0]
    sizer = KvSizer(cost, worst)
    raise InputError(
        f"{where}: replica {worst.id}",
        f"no {kind} can hold the KV of even one request ({tokens} tokens need "
        f"{max(sizer.bytes(tokens)) / GIB:.3f} GiB per device; {min(sizer.capacity) / GIB:.3f} GiB left "
        "after weights)",
        [s.device for s in worst.stages],
    )

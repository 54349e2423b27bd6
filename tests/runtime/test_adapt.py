"""Run-time role switching without Ray: the live views and the switch protocol.

The deployment parts are real (fleet, router, replica runners, metrics, the role controller);
the replicas have no stage actors, so nothing runs a model: the tests drive the counters the
serving loop drives (prompt tokens queued, sequences in decode slots) and the controller's clock.
The same protocol on real stage actors is checked in test_serve_adapt.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from e2llm.cli import main
from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.policy.controller import Demand
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.adapt import DRAIN_TIMEOUT_S
from e2llm.runtime.events import EventKind
from e2llm.runtime.generation import Generation, TextStream
from e2llm.runtime.load_view import replica_load
from e2llm.runtime.loss import Evicted
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.service import Deployment

SETTINGS = PolicySettings(adapt=True, ttft_budget_s=1.0, min_dwell_s=10.0)


class _NoText:
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return ""


def _gen(prompt: int = 8, max_tokens: int = 4) -> Generation:
    return Generation(
        list(range(1, prompt + 1)), max_tokens, 0.0, 1.0, None, frozenset(), TextStream(_NoText())
    )


LONG_PROMPTS = Demand(mean_input_tokens=100.0, mean_output_tokens=1.0)


def _plan() -> Plan:
    """One PREFILL and two DECODER replicas of equal devices: 100 prompt tok/s or 2 x 10 tok/s."""
    stages = (Stage("d", 0, 30, embedding=True, lm_head=True),)
    rates = {"prefill_tok_s": 100.0, "decode_tok_s_per_request": 10.0, "concurrency": 2}
    replicas = tuple(
        Replica(i, role, stages, **rates) for i, role in enumerate([Role.PREFILL, *[Role.DECODER] * 2])
    )  # type: ignore[arg-type]
    return Plan("e2llm", "m", 0.0, "bottleneck_s", replicas)


def _deployment(settings: PolicySettings = SETTINGS) -> Deployment:
    metrics = ServingMetrics()
    plan = _plan()
    runners = [ReplicaRunner(r, [], metrics, kv_budget_tokens=1000) for r in plan.replicas]

    def no_replan(plan: Plan, generation: int) -> list[ReplicaRunner]:
        raise AssertionError("not re-planned here")

    d = Deployment(plan, runners, metrics, no_replan, settings)
    d.roles.demand = lambda now: LONG_PROMPTS  # prompts of 100 tokens, one token out: prefill-bound
    return d


def test_the_view_is_filled_from_live_counters() -> None:
    async def run() -> None:
        d = _deployment()
        p, d1, _ = d.fleet.runners
        p.prefill_tokens_outstanding, p.prefill_waiting = 300, 2
        view = replica_load(p, 0.0, prompt_tokens=50)
        assert (view.role, view.queued_prompt_tokens, view.prompts_waiting) == (Role.PREFILL, 300, 2)
        assert view.prefill_tok_s == 100.0 and view.latency_s == pytest.approx(0.5)  # 50 tok at 100/s
        assert view.kv_ready_s() == pytest.approx(3.5)  # 300 queued at 100/s, then its own 0.5 s
        d1.slots.queue(_gen(prompt=8, max_tokens=92))  # reserves 100 tokens of KV
        view = replica_load(d1, 0.0, context=60)
        assert (view.decode_sequences, view.concurrency) == (1, 2)
        assert (view.kv_free_tokens, view.kv_capacity_tokens) == (900, 1000)
        assert view.decode_tok_s == pytest.approx(20.0)  # 2 slots x 10 tok/s (the plan's own rates)
        assert view.kv_used_share == pytest.approx(0.1)

    asyncio.run(run())


def test_a_decoder_switches_to_prefill_by_the_protocol_and_it_is_published() -> None:
    async def run() -> None:
        d = _deployment()
        p, d1, d2 = d.fleet.runners
        roles = d.roles
        assert roles.enabled
        roles.tick(1.0)
        assert roles.switching is None  # nothing queued: no switch
        p.prefill_tokens_outstanding = 500  # 5 s of prompts at 100 tok/s, budget 1 s: prefill is short
        d1.slots.queue(_gen())  # d1 decodes one sequence, d2 none: d2 drains soonest
        roles.tick(2.0)  # 1 -> 2 requests/s sustained (the decoders had 40): worth a switch
        assert d2.role is Role.PREFILL and d2.accepting and roles.switching is None  # already drained
        assert roles.last_switch_s == {2: 2.0}
        status = d.adaptation()
        assert status["roles"] == {"0": "PREFILL", "1": "DECODER", "2": "PREFILL"}
        assert status["role_switches"] == 1 and status["adapt"] is True
        events = [e for e in d.metrics.events.recent() if e.kind is EventKind.ROLE_SWITCH]
        assert len(events) == 1 and "replica 2" in events[0].text and "DECODER -> PREFILL" in events[0].text
        metrics = d.metrics.render().decode()
        assert 'e2llm_role_switches_total{replica="2",role="PREFILL"} 1.0' in metrics
        assert 'e2llm_replica_role{replica="2",role="PREFILL"} 1.0' in metrics
        assert 'e2llm_replica_role{replica="2",role="DECODER"} 0.0' in metrics
        roles.tick(3.0)
        assert roles.switching is None and d1.role is Role.DECODER  # the last decoder stays one
        assert d.fleet.router.pick_prefill(10) in (p, d2)

    asyncio.run(run())


def test_a_draining_decoder_takes_no_work_and_migrates_what_it_holds_after_the_timeout() -> None:
    async def run() -> None:
        d = _deployment()
        p, d1, d2 = d.fleet.runners
        p.prefill_tokens_outstanding = 500
        held = [_gen()]
        joins = [asyncio.create_task(d2.join(g, None)) for g in held]
        d1.slots.queue(_gen())
        d1.slots.queue(_gen())  # d1 holds more: d2 is the one to drain
        await asyncio.sleep(0)
        d2.slots.admit()
        await asyncio.sleep(0)  # admitted, its KV in place: it enters the batch
        roles = d.roles
        roles.tick(0.0)
        assert roles.switching is d2 and not d2.accepting and d2.role is Role.DECODER
        assert d.fleet.router.pick_decoder(p) is d1  # stop routing: the draining one is skipped
        roles.tick(DRAIN_TIMEOUT_S / 2)
        assert roles.switching is d2  # still draining
        roles.tick(DRAIN_TIMEOUT_S + 1)  # its sequences migrate ...
        for join in joins:
            with pytest.raises(Evicted, match="replica 2 switches to PREFILL"):
                await asyncio.wait_for(join, 5)
        for g in held:
            d2.release(g)  # what the life cycle does on the way out
        roles.tick(DRAIN_TIMEOUT_S + 2)  # ... and then it is drained
        assert d2.role is Role.PREFILL and d2.accepting and roles.switching is None

    asyncio.run(run())


def test_adapt_off_keeps_the_planned_roles() -> None:
    async def run() -> None:
        d = _deployment(PolicySettings(adapt=False))
        d.fleet.runners[0].prefill_tokens_outstanding = 500
        assert not d.roles.enabled
        d.start()
        await asyncio.sleep(0)
        assert d._control is None  # no control loop: nothing looks at the loads
        assert d.adaptation()["roles"] == {"0": "PREFILL", "1": "DECODER", "2": "DECODER"}
        await d.stop()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("args", "policy", "expect"),
    [
        (["--drift-threshold", "-1"], None, "--drift-threshold"),
        (["--drift-window", "0"], None, "--drift-window"),
        (["--drift-hold", "inf"], None, "--drift-hold"),
        (["--policy", "{policy}"], "prefill_hi: 2\n", "policy.yaml: prefill_hi: unknown policy setting"),
        (["--policy", "{policy}"], "min_gain: -1\n", "policy.yaml: min_gain: out of range"),
        (["--policy", "{policy}"], "chunk_tokens: 0\n", "policy.yaml: chunk_tokens: out of range"),
    ],
)
def test_serve_bad_adaptation_settings_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], policy: str | None, expect: str
) -> None:
    plan = tmp_path / "plan.json"
    replica = {"id": 0, "role": "COLOCATED", "devices": [{"name": "cpu0", "layers": [0, 30]}]}
    plan.write_text(
        json.dumps({"system": "t", "model": "smollm2-135m", "objective": 0, "replicas": [replica]})
    )
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
    argv = ["serve", str(plan), *[a.format(policy=tmp_path / "policy.yaml") for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err and "Traceback" not in err, err


def test_target_roles_are_reached_without_ever_emptying_a_pool() -> None:
    """A drift re-plan trading roles of a PREFILL and a DECODER replica: the decoder may only
    leave once another replica decodes, so the PREFILL one moves first."""

    async def run() -> None:
        d = _deployment(dataclasses.replace(SETTINGS, min_dwell_s=0.0))
        _, d1, d2 = d.fleet.runners
        d2.become(Role.PREFILL)  # now: PREFILL, DECODER, PREFILL
        roles = d.roles
        roles.demand = lambda now: Demand(1.0, 1.0)  # the policy itself finds nothing to move
        roles.retarget({0: Role.PREFILL, 1: Role.PREFILL, 2: Role.DECODER})
        roles.tick(1.0)
        assert (d1.role, d2.role) == (Role.DECODER, Role.DECODER)  # d2 first (drained at once)
        roles.tick(2.0)
        assert (d1.role, d2.role) == (Role.PREFILL, Role.DECODER) and not roles.targets

    asyncio.run(run())


def test_a_drift_assignment_keeps_alike_replicas_in_the_roles_they_have() -> None:
    from e2llm.plan.role_scoring import RoleAssignment
    from e2llm.plan.workload_shape import WorkloadShape
    from e2llm.runtime.drift_replan import fewest_switches

    d = _deployment()
    d.fleet.runners[2].become(Role.PREFILL)
    wanted = RoleAssignment((True, True, False), (1, 1, 2), 0.0, 1.0, 1.0, 1.0)  # two P, one D
    runners = d.fleet.runners
    got = fewest_switches(runners, [r.role for r in runners], WorkloadShape(100, 10, 1.0), wanted)
    assert got == [(True, 1), (False, 2), (True, 1)]  # d1 stays the decoder: nothing to switch


def test_a_drift_re_plan_does_not_undo_the_switch_in_flight() -> None:
    """Three alike replicas, a decoder draining for PREFILL when a drift re-plan asks for two
    PREFILL replicas: the draining one is the second (measured before: the re-plan kept the
    draining decoder a decoder, so it switched back at once and the other decoder drained too)."""
    from e2llm.plan.role_scoring import RoleAssignment
    from e2llm.plan.workload_shape import WorkloadShape

    async def run() -> None:
        d = _deployment()
        p, d1, d2 = d.fleet.runners
        p.prefill_tokens_outstanding = 500
        held = _gen()
        join = asyncio.create_task(d2.join(held, None))
        d1.slots.queue(_gen())
        d1.slots.queue(_gen())  # d1 holds more: d2 is the one to drain
        await asyncio.sleep(0)
        d2.slots.admit()
        await asyncio.sleep(0)
        d.roles.tick(0.0)
        assert d.roles.switching is d2 and d.roles.heading(d2) is Role.PREFILL
        wanted = RoleAssignment((True, True, False), (1, 1, 2), 0.0, 1.0, 1.0, 1.0)  # two P, one D
        d.drift._retarget(d.fleet.plan, WorkloadShape(100, 1, 1.0), wanted)
        assert d.roles.targets == {0: Role.PREFILL, 1: Role.DECODER, 2: Role.PREFILL}
        assert d1.slots.concurrency == 2
        join.cancel()

    asyncio.run(run())

"""The recorded observation sequence through the runtime's call sites: the same decisions.

`observations.json` holds what the simulator asked the serving policy and what it was told. Here
each question goes to the runtime's own call site instead (`runtime.router.Router`,
`runtime.adapt.RoleController`), with real `ReplicaRunner`s in the recorded roles whose views are
the recorded ones (`Router.view`, `RoleController.view`; live counters fill them when serving,
tests/runtime/test_adapt.py). Every answer must be the simulator's: one policy, two clocks.
"""

from __future__ import annotations

from typing import Any

import pytest
from replay import load_from_dict, observations

from e2llm.plan.types import Plan, Replica, Role, Scheduler, Stage
from e2llm.policy import mixed_pool
from e2llm.policy.controller import Demand
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.settings import PolicySettings
from e2llm.runtime.adapt import RoleController
from e2llm.runtime.fleet import Fleet
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.router import NoLiveReplica, Router

OBS = observations()
OTHER = 10_000  # id of a stand-in replica that no recorded view names (never a candidate)


def _runner(load: ReplicaLoad) -> ReplicaRunner:
    replica = Replica(load.id, load.role, (Stage("d", 0, 30),), concurrency=load.concurrency)
    runner = ReplicaRunner(replica, [], ServingMetrics())
    runner.home_role, runner.accepting = load.home_role, load.accepting
    return runner


def _runners(loads: list[ReplicaLoad], with_roles: tuple[Role, ...] = ()) -> list[ReplicaRunner]:
    """Runners in the recorded roles, plus stand-ins in `with_roles` the router needs to exist."""
    runners = [_runner(load) for load in loads]
    for i, role in enumerate(with_roles):
        runners.append(_runner(ReplicaLoad(OTHER + i, role, concurrency=1)))
    return runners


def _view(loads: list[ReplicaLoad]) -> Any:
    by_id = {load.id: load for load in loads}
    return lambda runner, now, prompt_tokens, context: by_id[runner.replica.id]


def _id(pick: Any) -> int | None:
    try:
        return int(pick().replica.id)
    except NoLiveReplica:
        return None


def _runtime_answer(obs: dict[str, Any]) -> Any:
    """Ask the runtime's call site the recorded question."""
    args, name = obs["args"], obs["decision"]
    loads = [load_from_dict(d) for d in args.get("loads", [])]
    if name == "pick_prefill":
        router = Router(_runners(loads, (Role.DECODER,)), Scheduler.JSQ, _view(loads))
        return _id(lambda: router.pick_prefill(args["prompt_tokens"], args["context"]))
    if name == "pick_decoder":
        runners = _runners(loads, (Role.PREFILL,))
        router = Router(runners, Scheduler.JSQ, _view(loads))
        return _id(lambda: router.pick_decoder(runners[-1], args["context"]))
    if name in ("route_prompt", "route_token"):
        runners = _runners(loads)
        router = Router(runners, Scheduler.SPLITWISE, _view(loads))
        before = {r.replica.id: r.role for r in runners}
        if name == "route_prompt":
            got = router.pick_prefill(args["prompt_tokens"])
        else:
            prefilled_on = _runner(ReplicaLoad(OTHER, Role.PREFILL))  # not where it decodes
            got = router.pick_decoder(prefilled_on, args["context"])
        borrowed = got.role is Role.COLOCATED and before[got.replica.id] is not Role.COLOCATED
        return {"replica": got.replica.id, "borrow": borrowed}
    if name == "returns":
        load = load_from_dict(args["load"])
        runner = _runner(load)
        router = Router([runner, *_runners([], (Role.PREFILL, Role.DECODER))], Scheduler.SPLITWISE)
        router.view = _view([load])
        router.settle(runner)
        return runner.home_role is None and runner.role is load.home_role
    if name == "decide_switch":
        runners = _runners(loads, (Role.PREFILL, Role.DECODER))
        roles = RoleController(_fleet(runners), PolicySettings(**args["settings"]), _view(loads))
        roles.last_switch_s = {int(k): v for k, v in args["last_switch_s"].items()}
        roles.switching = runners[-1] if args["in_flight"] else None
        got = roles.decide(loads, Demand(**args["demand"]), args["now_s"])
        return None if got is None else {"replica": got.replica, "to": got.to.value}
    if name == "drained":
        load = load_from_dict(args["load"])
        runner = _runner(load)
        fleet = _fleet([runner, *_runners([], (Role.PREFILL, Role.DECODER))])
        roles = RoleController(fleet, PolicySettings(adapt=True), _view([load]))
        other = Role.DECODER if load.role is Role.PREFILL else Role.PREFILL
        roles.switching, roles.switch_to, roles._drain_since = runner, other, 0.0
        roles.tick(1.0)  # within the drain timeout: it switches iff drained
        return runner.role is other
    raise ValueError(f"unknown decision {name!r}")


def _fleet(runners: list[ReplicaRunner]) -> Fleet:
    plan = Plan("e2llm", "m", 0.0, "bottleneck_s", tuple(r.replica for r in runners))
    return Fleet(plan, runners)


def _expected(obs: dict[str, Any]) -> Any:
    """The simulator's answer; where it found no token route, it asks `least_memory` next with the
    same views (the runtime does both in one pick)."""
    result = obs["result"]
    if obs["decision"] == "route_token" and result is None:
        loads = [load_from_dict(d) for d in obs["args"]["loads"]]
        fallback = mixed_pool.least_memory(loads, obs["args"]["context"])
        return None if fallback is None else {"replica": fallback.id, "borrow": False}
    return result


@pytest.mark.parametrize("i", range(len(OBS)))
def test_runtime_call_site_reproduces_the_recorded_decision(i: int) -> None:
    obs = OBS[i]
    assert _runtime_answer(obs) == _expected(obs), obs["decision"]

"""Replay recorded serving-policy observations: the harness both call sites use.

`observations.json` holds what the simulator asked the policy during three small runs (e2llm with
role switching, a plan with a MIXED replica, Splitwise with its mixed pool) and what it was told:
each observation is a decision name, its arguments (loads as `ReplicaLoad` fields) and the answer.
`decide(obs)` asks the policy again. A call site that fills the same views from its own state must
reproduce every answer: tests/policy/test_replay.py checks the policy itself; the runtime's
router is checked against the same file. Regenerate with
`.venv/bin/python tests/policy/record_observations.py` after a deliberate policy change.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from e2llm.plan.types import Role
from e2llm.policy import controller, mixed_pool, routing
from e2llm.policy.load import ReplicaLoad
from e2llm.policy.settings import PolicySettings

FIXTURE = Path(__file__).with_name("observations.json")
_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(ReplicaLoad) if f.default is not dataclasses.MISSING
}


def load_to_dict(r: ReplicaLoad) -> dict[str, Any]:
    """Only the fields that differ from the defaults (the file stays small)."""
    out: dict[str, Any] = {"id": r.id, "role": r.role.value}
    for f in dataclasses.fields(ReplicaLoad):
        v = getattr(r, f.name)
        if f.name not in out and v != _DEFAULTS[f.name]:
            out[f.name] = v.value if isinstance(v, Role) else v
    return out


def load_from_dict(d: dict[str, Any]) -> ReplicaLoad:
    kw = dict(d)
    kw["role"] = Role(kw["role"])
    if kw.get("home_role") is not None:
        kw["home_role"] = Role(kw["home_role"])
    return ReplicaLoad(**kw)


def answer(result: Any) -> Any:
    """A decision as plain JSON: a replica id, a (replica, role) switch, a route, a bool, None."""
    if isinstance(result, ReplicaLoad):
        return result.id
    if isinstance(result, controller.Switch):
        return {"replica": result.replica, "to": result.to.value}
    if isinstance(result, mixed_pool.Route):
        return {"replica": result.replica, "borrow": result.borrow}
    return result


def decide(obs: dict[str, Any]) -> Any:
    """Ask the policy the recorded question again."""
    args = obs["args"]
    loads = [load_from_dict(d) for d in args.get("loads", [])]
    name = obs["decision"]
    if name == "pick_prefill":
        got: Any = routing.pick_prefill(loads, args["prompt_tokens"], args["context"])
    elif name == "pick_decoder":
        got = routing.pick_decoder(loads, args["context"])
    elif name == "decide_switch":
        settings = PolicySettings(**args["settings"])
        last = {int(k): v for k, v in args["last_switch_s"].items()}
        demand = controller.Demand(**args["demand"])
        got = controller.decide_switch(loads, settings, demand, args["now_s"], last, args["in_flight"])
    elif name == "drained":
        got = controller.drained(load_from_dict(args["load"]))
    elif name == "route_prompt":
        got = mixed_pool.route_prompt(loads, args["prompt_tokens"])
    elif name == "route_token":
        got = mixed_pool.route_token(loads, args["context"])
    elif name == "least_memory":
        got = mixed_pool.least_memory(loads, args["context"])
    elif name == "returns":
        got = mixed_pool.returns(load_from_dict(args["load"]))
    else:
        raise ValueError(f"unknown decision {name!r}")
    return answer(got)


def observations() -> list[dict[str, Any]]:
    doc = json.loads(FIXTURE.read_text())
    obs: list[dict[str, Any]] = doc["observations"]
    return obs

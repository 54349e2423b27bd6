"""One recorded observation sequence, replayed through the serving policy: the same answers.

The sequence (observations.json) was recorded from the simulator's call site
(record_observations.py). The runtime's call site is held to the same file: filled from its
live counters, the same views must give the same decisions."""

from __future__ import annotations

import pytest
from replay import decide, load_from_dict, load_to_dict, observations

OBS = observations()


def test_the_sequence_covers_every_decision_and_switches() -> None:
    kinds = {o["decision"] for o in OBS}
    assert kinds >= {
        "pick_prefill",
        "pick_decoder",
        "decide_switch",
        "drained",
        "route_prompt",
        "route_token",
        "returns",
    }
    switches = [o["result"] for o in OBS if o["decision"] == "decide_switch" and o["result"]]
    assert {s["to"] for s in switches} == {"PREFILL", "DECODER"}
    assert any(o["result"] and o["result"]["borrow"] for o in OBS if o["decision"] == "route_prompt")
    assert any(o["result"] and o["result"]["borrow"] for o in OBS if o["decision"] == "route_token")


@pytest.mark.parametrize("i", range(len(OBS)))
def test_policy_reproduces_the_recorded_decision(i: int) -> None:
    obs = OBS[i]
    assert decide(obs) == obs["result"], obs["decision"]


def test_loads_round_trip() -> None:
    for obs in OBS:
        for d in obs["args"].get("loads", []):
            assert load_to_dict(load_from_dict(d)) == d

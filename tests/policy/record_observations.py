"""Record `observations.json`: the simulator's questions to the serving policy and its answers.

    .venv/bin/python tests/policy/record_observations.py

Three small runs on the hand-made tiny cluster of tests/sim/simkit.py: e2llm's role controller
under a prompt-heavy then decode-heavy load, a plan with a MIXED replica, and Splitwise's mixed
pool under a burst of long prompts. Every policy call the simulator makes is captured (wrapping
the policy functions where the simulator looks them up); the file keeps every role switch,
borrowing, finished drain and return, and an even sample of the other calls with a choice to make.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "sim"))

from replay import FIXTURE, answer, load_to_dict  # noqa: E402
from simkit import LinearTimes, cost_model, plan, replica  # noqa: E402

from e2llm.plan.types import Role  # noqa: E402
from e2llm.policy import controller, mixed_pool, routing  # noqa: E402
from e2llm.policy.controller import Demand  # noqa: E402
from e2llm.policy.load import ReplicaLoad  # noqa: E402
from e2llm.policy.settings import PolicySettings  # noqa: E402
from e2llm.sim import router, simulator  # noqa: E402
from e2llm.sim.simulator import ServingContext, simulate  # noqa: E402
from e2llm.specs.workload import Request  # noqa: E402

PER_KIND = 25  # calls kept per decision kind (all non-trivial switch / borrow answers are kept)


def _args(value: Any) -> Any:
    if isinstance(value, ReplicaLoad):
        return load_to_dict(value)
    if isinstance(value, PolicySettings | Demand):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [_args(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _args(v) for k, v in value.items()}
    return value


def _recording(
    name: str, fn: Callable[..., Any], params: list[str], log: list[dict[str, Any]]
) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        got = fn(*args)
        log.append(
            {
                "decision": name,
                "args": {p: _args(a) for p, a in zip(params, args, strict=True)},
                "result": answer(got),
            }
        )
        return got

    return wrapped


def _requests(
    n: int, seed: int, gap_s: float, phases: list[tuple[tuple[int, int], tuple[int, int]]]
) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (pi, po), (qi, qo) = phases[min(i * len(phases) // n, len(phases) - 1)]
        out.append(Request(i, (i + 1) * gap_s, rng.randint(pi, po), rng.randint(qi, qo)))
    return out


def _decisive(obs: dict[str, Any]) -> bool:
    """A role switch, a borrowing, a finished drain or a return: every one of them is kept."""
    r = obs["result"]
    if obs["decision"] == "decide_switch":
        return r is not None
    if obs["decision"] in ("route_prompt", "route_token"):
        return r is not None and r["borrow"]
    return obs["decision"] in ("drained", "returns") and r is True


def main() -> None:
    log: list[dict[str, Any]] = []
    patches = [
        (routing, "pick_prefill", ["loads", "prompt_tokens", "context"]),
        (routing, "pick_decoder", ["loads", "context"]),
        (mixed_pool, "route_prompt", ["loads", "prompt_tokens"]),
        (mixed_pool, "route_token", ["loads", "context"]),
        (mixed_pool, "least_memory", ["loads", "context"]),
    ]
    for module, name, params in patches:
        setattr(module, name, _recording(name, getattr(module, name), params, log))
    # the simulator imports these by name
    simulator.decide_switch = _recording(  # type: ignore[assignment]
        "decide_switch",
        controller.decide_switch,
        ["loads", "settings", "demand", "now_s", "last_switch_s", "in_flight"],
        log,
    )
    simulator.drained = _recording("drained", controller.drained, ["load"], log)  # type: ignore[assignment]
    simulator.returns = _recording("returns", mixed_pool.returns, ["load"], log)  # type: ignore[assignment]
    assert router.routing is routing and router.mixed_pool is mixed_pool

    cost = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002))
    adaptive = plan(
        replica(0, Role.PREFILL, [("a", 0, 4)]),
        replica(1, Role.DECODER, [("b", 0, 4)], concurrency=4),
        replica(2, Role.DECODER, [("c", 0, 4)], concurrency=4),
        replica(3, Role.DECODER, [("d", 0, 4)], concurrency=4),
    )
    settings = PolicySettings(adapt=True, ttft_budget_s=1.0, min_dwell_s=5.0)
    reqs = _requests(240, 1, 0.25, [((200, 400), (2, 10)), ((10, 30), (100, 200))])
    simulate(adaptive, cost, reqs, ServingContext(settings))

    mixed = plan(
        replica(0, Role.PREFILL, [("a", 0, 2), ("b", 2, 4)]),
        replica(1, Role.MIXED, [("c", 0, 4)], concurrency=4),
        replica(2, Role.DECODER, [("d", 0, 4)], concurrency=4),
    )
    simulate(
        mixed,
        cost,
        _requests(80, 2, 0.4, [((100, 400), (20, 60))]),
        ServingContext(PolicySettings(chunk_tokens=128)),
    )

    small = cost_model(["a", "b", "c", "d"], LinearTimes(decode_s_per_seq=0.002), memory_gb=0.76)
    splitwise = plan(
        replica(0, Role.PREFILL, [("a", 0, 4)]),
        replica(1, Role.PREFILL, [("b", 0, 4)]),
        replica(2, Role.DECODER, [("c", 0, 4)], concurrency=8),
        replica(3, Role.DECODER, [("d", 0, 4)], concurrency=8),
        scheduler="splitwise",
    )
    simulate(splitwise, small, _requests(200, 3, 0.2, [((2000, 4000), (2, 10)), ((10, 30), (100, 200))]))

    kept = [o for o in log if _decisive(o)]
    for kind in dict.fromkeys(o["decision"] for o in log):
        calls = [
            o
            for o in log
            if o["decision"] == kind and not _decisive(o) and len(o["args"].get("loads", [0, 0])) > 1
        ]
        step = max(1, len(calls) // PER_KIND)
        kept += calls[::step][:PER_KIND]
    kept.sort(key=log.index)
    doc = {"source": "tests/policy/record_observations.py", "observations": kept}
    FIXTURE.write_text(
        json.dumps(doc, indent=None, separators=(",", ":")).replace('{"decision"', '\n{"decision"') + "\n"
    )
    counts = {
        k: sum(1 for o in kept if o["decision"] == k) for k in dict.fromkeys(o["decision"] for o in kept)
    }
    print(f"wrote {FIXTURE} ({len(kept)} observations of {len(log)}): {counts}")


if __name__ == "__main__":
    main()

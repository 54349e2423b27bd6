"""The simulator against queueing theory: one prefill server, Poisson arrivals, fixed service."""

from __future__ import annotations

import random

import pytest
from simkit import cost_model, plan, replica

from e2llm.plan.types import Role
from e2llm.sim.metrics import summarize
from e2llm.sim.simulator import simulate
from e2llm.specs.workload import Request


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_prefill_queue_matches_md1(rho: float) -> None:
    # one 1-stage prefill replica: 4 layers x 100 tokens x 1 ms + 5 ms head = 0.405 s per prompt
    service = 0.405
    cost = cost_model(["p", "d"])
    p = plan(replica(0, Role.PREFILL, [("p", 0, 4)]), replica(1, Role.DECODER, [("d", 0, 4)], concurrency=64))
    rate = rho / service
    rng = random.Random(7)
    t, reqs = 0.0, []
    for i in range(20_000):
        t += rng.expovariate(rate)
        reqs.append(Request(i, t, 100, 2))
    recs = simulate(p, cost, reqs).records
    queued = [r.prefill_start_s - r.arrival_s for r in recs]  # type: ignore[operator]
    expected = rho / (2 * (1 / service) * (1 - rho))  # M/D/1: Wq = rho / (2 mu (1 - rho))
    assert sum(queued) / len(queued) == pytest.approx(expected, rel=0.05)
    # nothing waits at the (large) decoder, so the metric equals the prefill queueing
    assert summarize(recs)["waiting_time_s"]["mean"] == pytest.approx(sum(queued) / len(queued))

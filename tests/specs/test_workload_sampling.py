"""Request generation: determinism, ids and ordering, means, arrival processes, clamps."""

import dataclasses
import itertools

import numpy as np
import pytest

from e2llm.specs.workload import Arrival, LengthDist, Workload, generate_requests


def workload(arrival=None, din=None, dout=None, n=4000, seed=3):
    return Workload(
        requests=n,
        seed=seed,
        arrival=arrival or Arrival("poisson", 0.5),
        input_tokens=din or LengthDist("lognormal", 576, cv=0.5, high=5760),
        output_tokens=dout or LengthDist("lognormal", 588, cv=0.5, high=5880),
    )


def test_same_seed_same_requests_other_seed_other_requests():
    w = workload(n=300)
    assert generate_requests(w) == generate_requests(w)
    assert generate_requests(w, seed=4) != generate_requests(w)
    assert generate_requests(w, seed=3) == generate_requests(w)


def test_ids_arrivals_and_token_counts_are_well_formed():
    reqs = generate_requests(workload(din=LengthDist("lognormal", 3, cv=2.0, high=30)))
    assert [r.id for r in reqs] == list(range(len(reqs)))
    assert reqs[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(reqs))
    assert min(r.input_tokens for r in reqs) >= 1 and max(r.input_tokens for r in reqs) <= 30


@pytest.mark.parametrize("process", ["fixed", "poisson", "gamma"])
def test_arrival_processes_have_the_requested_mean_and_burstiness(process):
    cv = {"fixed": 0.0, "poisson": 1.0, "gamma": 3.0}[process]
    w = workload(arrival=Arrival(process, 0.5, cv=cv if process == "gamma" else 0.0), n=20000)
    t = np.array([r.arrival_s for r in generate_requests(w)])
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.5, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.1 * max(cv, 0.1))


def test_lognormal_means_stay_near_the_published_means():
    reqs = generate_requests(workload(n=20000))
    assert np.mean([r.input_tokens for r in reqs]) == pytest.approx(576, rel=0.02)
    assert np.mean([r.output_tokens for r in reqs]) == pytest.approx(588, rel=0.02)
    ins = np.array([r.input_tokens for r in reqs])
    assert ins.std() / ins.mean() == pytest.approx(0.5, rel=0.1)


def test_changing_lengths_leaves_arrivals_alone():
    w = workload(n=100)
    other = dataclasses.replace(w, output_tokens=LengthDist("fixed", 7))
    assert [r.arrival_s for r in generate_requests(w)] == [r.arrival_s for r in generate_requests(other)]
    assert {r.output_tokens for r in generate_requests(other)} == {7}


def test_uniform_lengths_cover_the_range():
    reqs = generate_requests(workload(din=LengthDist("uniform", 15, low=10, high=20), n=2000))
    assert {r.input_tokens for r in reqs} == set(range(10, 21))

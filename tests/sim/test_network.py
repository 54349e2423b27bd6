"""Processor sharing on links: concurrent transfers split the bandwidth fairly."""

from __future__ import annotations

import random

import pytest
from simkit import cluster

from e2llm.sim.engine import Event, EventLoop
from e2llm.sim.network import Network

MB = 1e6  # the test link moves 1e6 bytes/s with 1 ms latency


def _run(sends: list[tuple[float, str, str, float]]) -> list[float]:
    """Start each (time, a, b, bytes) transfer; return each delivery time."""
    net = Network(cluster(["a", "b", "c"]))
    loop = EventLoop()
    done = [float("nan")] * len(sends)

    def start(now: float, i: int) -> list[Event]:
        _, a, b, n = sends[i]

        def arrived(t: float) -> list[Event]:
            done[i] = t
            return []

        return net.send(now, a, b, n, arrived)

    loop.push([Event(t, start, i) for i, (t, *_rest) in enumerate(sends)])
    loop.run()
    return done


def test_one_transfer_alone() -> None:
    assert _run([(0.0, "a", "b", MB)]) == [pytest.approx(1.001)]


def test_two_concurrent_transfers_take_twice_as_long() -> None:
    assert _run([(0.0, "a", "b", MB), (0.0, "a", "b", MB)]) == [pytest.approx(2.001)] * 2


def test_late_joiner_shares_the_rest() -> None:
    # second starts at 0.5 s: both share until the first's remaining 0.5 MB is done (at 1.5 s),
    # then the second has 0.5 MB left alone (done at 2.0 s)
    assert _run([(0.0, "a", "b", MB), (0.5, "a", "b", MB)]) == [pytest.approx(1.501), pytest.approx(2.001)]


def test_other_pairs_and_directions_do_not_compete() -> None:
    got = _run([(0.0, "a", "b", MB), (0.0, "b", "a", MB), (0.0, "a", "c", MB)])
    assert got == [pytest.approx(1.001)] * 3


def test_same_device_is_free() -> None:
    assert _run([(0.25, "a", "a", MB)]) == [0.25]


def test_random_flows_conserve_bandwidth() -> None:
    # whatever the start times, one channel never beats its bandwidth and never idles while
    # bytes wait: the last delivery is when the busy periods' bytes are done
    rng = random.Random(5)
    for _ in range(20):
        sends = sorted((rng.uniform(0, 2), "a", "b", rng.uniform(1e4, 1e6)) for _ in range(rng.randint(1, 8)))
        got = _run(sends)
        t_free = 0.0  # work-conserving single server: when the channel would drain
        for t, _a, _b, n in sends:
            t_free = max(t_free, t) + n / MB
        assert max(got) == pytest.approx(t_free + 0.001)
        for (t, _a, _b, n), done in zip(sends, got, strict=True):
            assert done >= t + n / MB + 0.001 - 1e-9  # never faster than alone

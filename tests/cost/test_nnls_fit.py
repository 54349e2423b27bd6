"""Non-negative relative least squares and the profile curve fits."""

from __future__ import annotations

import random

import pytest

from e2llm.cost.fit import median_abs_rel_error, nnls_relative
from e2llm.cost.profile import ProfileSamples, fit_errors, fit_profile


def synthetic(
    pre: tuple[float, float, float],
    dec: tuple[float, float, float],
    head: tuple[float, float],
    noise: float = 0.0,
):
    rng = random.Random(7)

    def n() -> float:
        return 1.0 + rng.uniform(-noise, noise)

    a, b, c = pre
    prefill = tuple((t, (a + b * t + c * t * t) * n()) for t in (16, 64, 128, 512, 1024, 2048, 4096))
    a, b, c = dec
    decode = tuple(
        (bs, ctx, (a + b * bs + c * bs * ctx) * n()) for bs in (1, 4, 16, 64) for ctx in (128, 1024, 4096)
    )
    a, b = head
    heads = tuple((t, (a + b * t) * n()) for t in (1, 8, 64, 256))
    return ProfileSamples(prefill=prefill, decode=decode, head=heads)


def test_fit_recovers_known_coefficients() -> None:
    pre, dec, head = (5e-4, 2e-6, 3e-10), (4e-4, 1e-5, 2e-9), (1e-4, 3e-6)
    fit = fit_profile(synthetic(pre, dec, head))
    assert fit.prefill == pytest.approx(pre, rel=1e-6)
    assert fit.decode == pytest.approx(dec, rel=1e-6)
    assert fit.head == pytest.approx(head, rel=1e-6)
    assert fit.embed is None
    assert all(e < 1e-9 for e in fit_errors(synthetic(pre, dec, head), fit).values())


def test_fit_with_noise_stays_close() -> None:
    pre, dec, head = (5e-4, 2e-6, 3e-10), (4e-4, 1e-5, 2e-9), (1e-4, 3e-6)
    samples = synthetic(pre, dec, head, noise=0.03)
    fit = fit_profile(samples)
    errs = fit_errors(samples, fit)
    assert max(errs.values()) < 0.03
    assert fit.prefill[2] == pytest.approx(pre[2], rel=0.2)


def test_coefficients_never_negative() -> None:
    # a flat curve (pure overhead) tempts unconstrained least squares into a negative slope
    y = [1.0, 0.99, 0.98, 0.97]
    x = nnls_relative([(1, t, t * t) for t in (1, 2, 3, 4)], y)
    assert min(x) >= 0.0
    assert x[0] == pytest.approx(0.985, rel=0.02)


def test_nnls_relative_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        nnls_relative([(1.0, 2.0)], [0.0])
    with pytest.raises(ValueError):
        nnls_relative([], [])


def test_fit_profile_needs_samples() -> None:
    with pytest.raises(ValueError, match="decode"):
        fit_profile(ProfileSamples(prefill=((1, 1.0),), decode=(), head=((1, 1.0),)))


def test_median_abs_rel_error() -> None:
    assert median_abs_rel_error([1.1, 0.5, 3.0], [1.0, 1.0, 3.0]) == pytest.approx(0.1)

"""A device profile in memory: measured samples, the fitted curves, and how the fit is made.

The JSON form and its documentation live in cost/profile.py (which re-exports these names);
`ProfileTimes` (cost/profile_times.py) turns a profile into the cost model's `DeviceTimes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from e2llm.cost.fit import median_abs_rel_error, nnls_relative
from e2llm.specs.model_spec import ModelSpec, profile_shape


@dataclass(frozen=True)
class ProfileSamples:
    """Measured times of one call, in seconds: (tokens, s), (batch, context, s), (tokens, s)."""

    prefill: tuple[tuple[int, float], ...]
    decode: tuple[tuple[int, int, float], ...]
    head: tuple[tuple[int, float], ...]
    embed: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class ProfileFit:
    """Fitted coefficients (see the module docstring); all >= 0, seconds per unit."""

    prefill: tuple[float, float, float]
    decode: tuple[float, float, float]
    head: tuple[float, float]
    embed: tuple[float, float] | None = None

    def prefill_s(self, tokens: float) -> float:
        a, b, c = self.prefill
        return a + b * tokens + c * tokens * tokens

    def decode_s(self, batch: float, context: float) -> float:
        a, b, c = self.decode
        return a + b * batch + c * batch * context

    def head_s(self, tokens: float) -> float:
        a, b = self.head
        return a + b * tokens


@dataclass(frozen=True)
class Profile:
    """One device's profile for one model shape (`model` has n_layers=1: a single layer type)."""

    device_name: str
    torch_device: str
    dtype: str
    model: ModelSpec
    samples: ProfileSamples
    fit: ProfileFit
    fit_error: Mapping[str, float]
    memory_bandwidth_gbs: float
    source: str = "<profile>"  # file it was read from, for error messages
    layer_params: int = field(default=0)  # as measured (biases included); informational


def fit_profile(samples: ProfileSamples) -> ProfileFit:
    """Non-negative relative least-squares fit of every curve. Needs >= 1 sample per curve
    (prefill, decode, head); more distinct points than coefficients for a meaningful fit."""
    for name in ("prefill", "decode", "head"):
        if not getattr(samples, name):
            raise ValueError(f"no {name} samples to fit")
    pre = nnls_relative([(1.0, t, t * t) for t, _ in samples.prefill], [s for _, s in samples.prefill])
    dec = nnls_relative([(1.0, b, b * c) for b, c, _ in samples.decode], [s for *_, s in samples.decode])
    head = nnls_relative([(1.0, t) for t, _ in samples.head], [s for _, s in samples.head])
    emb = None
    if samples.embed:
        emb = nnls_relative([(1.0, t) for t, _ in samples.embed], [s for _, s in samples.embed])
    return ProfileFit(
        prefill=(pre[0], pre[1], pre[2]),
        decode=(dec[0], dec[1], dec[2]),
        head=(head[0], head[1]),
        embed=None if emb is None else (emb[0], emb[1]),
    )


def fit_errors(samples: ProfileSamples, fit: ProfileFit) -> dict[str, float]:
    """Median absolute relative error of `fit` on each non-empty sample list."""

    def err(pred: list[float], rows: tuple[tuple[Any, ...], ...]) -> float:
        return median_abs_rel_error(pred, [row[-1] for row in rows])

    out = {
        "prefill": err([fit.prefill_s(t) for t, _ in samples.prefill], samples.prefill),
        "decode": err([fit.decode_s(b, c) for b, c, _ in samples.decode], samples.decode),
        "head": err([fit.head_s(t) for t, _ in samples.head], samples.head),
    }
    if samples.embed and fit.embed is not None:
        a, b = fit.embed
        out["embed"] = err([a + b * t for t, _ in samples.embed], samples.embed)
    return out


def make_profile(
    *,
    device_name: str,
    torch_device: str,
    dtype: str,
    model: ModelSpec,
    samples: ProfileSamples,
    memory_bandwidth_gbs: float,
) -> Profile:
    """A profile of `model`'s layer shape with its fit and fit error computed from `samples`."""
    fit = fit_profile(samples)
    return Profile(
        device_name=device_name,
        torch_device=torch_device,
        dtype=dtype,
        model=profile_shape(model),
        samples=samples,
        fit=fit,
        fit_error=fit_errors(samples, fit),
        memory_bandwidth_gbs=memory_bandwidth_gbs,
        layer_params=model.layer_params,
    )

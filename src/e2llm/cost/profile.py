"""The device profile: measured per-layer times of one device, and the curves fitted to them.

`e2llm profile` writes it, a cluster entry's `profile:` names it, and `ProfileTimes`
(cost/profile_times.py) turns it into the cost model's `DeviceTimes`. Full description with an
example: docs/profile-format.md. The JSON (format "e2llm-profile/1"):

    {"format": "e2llm-profile/1",
     "device": {"name": "h200", "torch_device": "cuda", "dtype": "bf16"},
     "model": {"name": "llama-3.1-8b", "hidden": 4096, "n_heads": 32, "n_kv_heads": 8,
               "head_dim": 128, "intermediate": 14336, "vocab": 128256, "n_experts": 0,
               "experts_per_token": 0, "weight_precision": "bf16", "expert_precision": "bf16",
               "kv_bytes_per_value": 2.0, "layer_params": 218112000},
     "samples": {"prefill": [[tokens, seconds], ...],            # one layer, empty cache
                 "decode": [[batch, context, seconds], ...],     # one layer, one step
                 "head": [[tokens, seconds], ...],               # final norm + LM head
                 "embed": [[tokens, seconds], ...]},             # optional
     "fit": {"prefill": [a, b, c], "decode": [a, b, c], "head": [a, b], "embed": [a, b]},
     "fit_error": {"prefill": 0.03, "decode": 0.05, "head": 0.01},
     "memory_bandwidth_gbs": 3900.0}

Curves (seconds, per call): prefill a + b·T + c·T², decode a + b·B + c·B·C, head and embed
a + b·T, with T tokens, B sequences, C context tokens per sequence. Coefficients are >= 0 and fitted
to relative error (cost/fit.py). `fit` may be omitted: it is then fitted from the samples on load.
`fit_error` is the median absolute relative error of the fit on its own samples. The samples are
taken on a full-attention layer (the profiled model's sliding-window pattern is not recorded).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2llm.cost.profile_data import (
    Profile,
    ProfileFit,
    ProfileSamples,
    fit_errors,
    fit_profile,
    make_profile,
)
from e2llm.cost.profile_times import ProfileTimes
from e2llm.errors import InputError
from e2llm.specs.fields import as_list, as_mapping, field_where, get_int, get_number, get_str
from e2llm.specs.input_file import parse_json, read_input_text
from e2llm.specs.model_spec import PROFILE_FIELDS, ModelSpec, model_from_dict

__all__ = [
    "FORMAT",
    "Profile",
    "ProfileFit",
    "ProfileSamples",
    "ProfileTimes",
    "fit_errors",
    "fit_profile",
    "load_profile",
    "make_profile",
    "profile_from_dict",
    "profile_to_dict",
    "save_profile",
]

FORMAT = "e2llm-profile/1"


def profile_to_dict(p: Profile) -> dict[str, Any]:
    m = p.model
    s = p.samples
    samples: dict[str, Any] = {
        "prefill": [list(x) for x in s.prefill],
        "decode": [list(x) for x in s.decode],
        "head": [list(x) for x in s.head],
    }
    fit: dict[str, Any] = {
        "prefill": list(p.fit.prefill),
        "decode": list(p.fit.decode),
        "head": list(p.fit.head),
    }
    if s.embed:
        samples["embed"] = [list(x) for x in s.embed]
    if p.fit.embed is not None:
        fit["embed"] = list(p.fit.embed)
    model: dict[str, Any] = {k: getattr(m, k) for k in PROFILE_FIELDS}
    model["layer_params"] = p.layer_params or m.layer_params
    return {
        "format": FORMAT,
        "device": {"name": p.device_name, "torch_device": p.torch_device, "dtype": p.dtype},
        "model": model,
        "samples": samples,
        "fit": fit,
        "fit_error": dict(p.fit_error),
        "memory_bandwidth_gbs": p.memory_bandwidth_gbs,
    }


def save_profile(p: Profile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile_to_dict(p), indent=1) + "\n")


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile JSON; every problem is an InputError naming file and field."""
    where = str(path)
    return profile_from_dict(parse_json(read_input_text(path, "profile"), where), where)


def profile_from_dict(data: object, where: str = "<profile>") -> Profile:
    """Validate a parsed profile; `where` (the file name) prefixes every error."""
    top = as_mapping(data, where)
    fmt = top.get("format")
    if fmt != FORMAT:
        raise InputError(field_where(where, "format"), f"must be {FORMAT!r}", fmt)
    dev_where, model_where = field_where(where, "device"), field_where(where, "model")
    dev = _section(top, "device", where)
    mod = _section(top, "model", where)
    samples = _samples_from(_section(top, "samples", where), field_where(where, "samples"))
    if "fit" in top:
        fit = _fit_from(_section(top, "fit", where), field_where(where, "fit"))
    else:
        fit = fit_profile(samples)  # samples are validated non-empty, so this cannot fail
    return Profile(
        device_name=get_str(dev, "name", dev_where),
        torch_device=get_str(dev, "torch_device", dev_where),
        dtype=get_str(dev, "dtype", dev_where),
        model=_model_from(mod, model_where),
        samples=samples,
        fit=fit,
        fit_error=fit_errors(samples, fit),
        memory_bandwidth_gbs=get_number(top, "memory_bandwidth_gbs", where),
        source=where,
        layer_params=get_int(mod, "layer_params", model_where, default=0, minimum=0),
    )


def _section(top: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    w = field_where(where, key)
    if key not in top:
        raise InputError(w, "missing required field")
    return as_mapping(top[key], w)


def _model_from(mod: Mapping[str, Any], where: str) -> ModelSpec:
    """The profiled shape (`profile_shape`); other keys of the section are not read."""
    known = {k: mod[k] for k in PROFILE_FIELDS if mod.get(k) is not None}
    return model_from_dict({"name": "profiled-model", **known, "n_layers": 1}, where)


def _list(m: Mapping[str, Any], key: str, where: str) -> list[Any]:
    w = field_where(where, key)
    if key not in m:
        raise InputError(w, "missing required field")
    return as_list(m[key], w)


def _count(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(where, "must be a positive integer", v)
    return v


def _number(v: Any, where: str, *, positive: bool) -> float:
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float)
        or not math.isfinite(v)
        or v < 0
        or (positive and v == 0)
    ):
        raise InputError(where, f"must be a {'positive' if positive else 'non-negative'} number", v)
    return float(v)


def _rows(s: Mapping[str, Any], key: str, width: int, where: str, *, required: bool) -> list[tuple[Any, ...]]:
    """[[size..., seconds], ...]: positive integer sizes, positive seconds."""
    if key not in s and not required:
        return []
    w = field_where(where, key)
    raw = _list(s, key, where)
    if not raw:
        raise InputError(w, "must hold at least one sample", raw)
    out = []
    for i, row in enumerate(raw):
        rw = field_where(w, i)
        row = as_list(row, rw)
        if len(row) != width:
            raise InputError(rw, f"must be [{', '.join(['size'] * (width - 1))}, seconds]", row)
        sizes = [_count(v, field_where(rw, j)) for j, v in enumerate(row[:-1])]
        out.append((*sizes, _number(row[-1], field_where(rw, width - 1), positive=True)))
    return out


def _samples_from(s: Mapping[str, Any], w: str) -> ProfileSamples:
    return ProfileSamples(
        prefill=tuple((int(t), float(x)) for t, x in _rows(s, "prefill", 2, w, required=True)),
        decode=tuple((int(b), int(c), float(x)) for b, c, x in _rows(s, "decode", 3, w, required=True)),
        head=tuple((int(t), float(x)) for t, x in _rows(s, "head", 2, w, required=True)),
        embed=tuple((int(t), float(x)) for t, x in _rows(s, "embed", 2, w, required=False)),
    )


def _fit_from(f: Mapping[str, Any], where: str) -> ProfileFit:
    def coeffs(key: str, n: int) -> tuple[float, ...]:
        w = field_where(where, key)
        raw = _list(f, key, where)
        if len(raw) != n:
            raise InputError(w, f"must be a list of {n} coefficients", raw)
        return tuple(_number(v, field_where(w, j), positive=False) for j, v in enumerate(raw))

    pre, dec, head = coeffs("prefill", 3), coeffs("decode", 3), coeffs("head", 2)
    emb = coeffs("embed", 2) if "embed" in f else None
    return ProfileFit(
        prefill=(pre[0], pre[1], pre[2]),
        decode=(dec[0], dec[1], dec[2]),
        head=(head[0], head[1]),
        embed=None if emb is None else (emb[0], emb[1]),
    )

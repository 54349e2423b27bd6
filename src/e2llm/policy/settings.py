"""The serving policy's settings: what `--adapt` and a `--policy` file set, validated.

Defaults are what `e2llm simulate` / `compare` use, but for `adapt`, which their `--adapt` flag
sets (default on; the library default keeps a plan's roles as planned). `settings_from_dict`
turns a plain mapping (a parsed YAML/JSON file) into `PolicySettings`, with one InputError
naming the setting and the value for an unknown key, a wrong type or a value out of range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from e2llm.errors import InputError

MAX_THRESHOLD = 100.0  # a normalised backlog this far past its budget is no longer a threshold
MAX_SECONDS = 86_400.0
MAX_CHUNK_TOKENS = 1 << 16


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Thresholds are normalised backlogs (see `policy.controller`): 1 = exactly at the budget."""

    adapt: bool = (
        False  # run-time role switching (the CLI's default: on); False = the plan's roles fixed (the paper)
    )
    ttft_budget_s: float = 10.0  # prefill queue (s) a prompt may meet before prefill is "short"
    prefill_high: float = 1.0  # a decoder may move to PREFILL at or above this prefill pressure
    decode_high: float = 1.0  # a PREFILL replica may move to DECODER at or above this decode pressure
    min_gain: float = 0.1  # ... if that raises the rate both pools sustain by this share at least
    min_dwell_s: float = 60.0  # a replica keeps a role at least this long
    chunk_tokens: int = 512  # MIXED replicas: tokens per iteration (decode tokens + prompt chunk)


# setting -> (lowest allowed, highest allowed, whether the lowest itself is allowed)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "ttft_budget_s": (0.0, MAX_SECONDS, False),
    "prefill_high": (0.0, MAX_THRESHOLD, False),
    "decode_high": (0.0, MAX_THRESHOLD, False),
    "min_gain": (0.0, MAX_THRESHOLD, True),
    "min_dwell_s": (0.0, MAX_SECONDS, True),
    "chunk_tokens": (1, MAX_CHUNK_TOKENS, True),
}


def settings_from_dict(d: Any, source: str, base: PolicySettings | None = None) -> PolicySettings:
    """Settings from a mapping of setting name -> value (missing ones keep `base`'s)."""
    if not isinstance(d, Mapping):
        raise InputError(source, "policy settings must be a mapping of setting: value", d)
    known = [f.name for f in fields(PolicySettings)]
    out = base or PolicySettings()
    for key, value in d.items():
        where = f"{source}: {key}"
        if key not in known:
            raise InputError(where, f"unknown policy setting; choose from {', '.join(known)}", value)
        if key == "adapt":
            if not isinstance(value, bool):
                raise InputError(where, "must be true or false", value)
        else:
            integer = key == "chunk_tokens"
            kind = "an integer" if integer else "a number"
            if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
                raise InputError(where, f"must be {kind}", value)
            lo, hi, closed = _RANGES[key]
            if not (math.isfinite(value) and (lo <= value if closed else lo < value) and value <= hi):
                raise InputError(where, f"out of range {'[' if closed else '('}{lo:g}, {hi:g}]", value)
            value = value if integer else float(value)
        out = replace(out, **{key: value})
    return out

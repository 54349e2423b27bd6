"""Policy settings from a mapping: every bad one is a single InputError naming it."""

from __future__ import annotations

import pytest

from e2llm.errors import InputError
from e2llm.policy.settings import PolicySettings, settings_from_dict


def test_defaults_and_overrides() -> None:
    s = settings_from_dict({"adapt": True, "ttft_budget_s": 4, "chunk_tokens": 256}, "p.yaml")
    assert s == PolicySettings(adapt=True, ttft_budget_s=4.0, chunk_tokens=256)
    assert isinstance(s.ttft_budget_s, float)


@pytest.mark.parametrize(
    ("d", "needle"),
    [
        ({"adaptive": True}, "p.yaml: adaptive: unknown policy setting"),
        ({"adapt": "yes"}, "p.yaml: adapt: must be true or false"),
        ({"ttft_budget_s": 0}, "p.yaml: ttft_budget_s: out of range (0, 86400]"),
        ({"prefill_high": -1}, "prefill_high: out of range"),
        ({"min_gain": float("nan")}, "min_gain: out of range"),
        ({"prefill_high": 1e9}, "prefill_high: out of range"),
        ({"chunk_tokens": 0}, "chunk_tokens: out of range [1, 65536]"),
        ({"chunk_tokens": 1.5}, "chunk_tokens: must be an integer"),
        ({"min_dwell_s": True}, "min_dwell_s: must be a number"),
        ([1, 2], "p.yaml: policy settings must be a mapping"),
    ],
)
def test_bad_settings(d: object, needle: str) -> None:
    with pytest.raises(InputError, match=None) as err:
        settings_from_dict(d, "p.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value)

"""The serving-policy flags `simulate`, `compare` and `serve` share: `--adapt on|off`, `--policy FILE`."""

from __future__ import annotations

import argparse
import dataclasses

from e2llm.policy.settings import PolicySettings, settings_from_dict
from e2llm.specs.fields import read_yaml_mapping


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapt",
        choices=("on", "off"),
        help="run-time role switching of e2llm's replicas (default on; off: the plan's roles stay fixed, "
        "as in the paper). Splitwise's own mixed pool always runs",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="YAML/JSON mapping of serving-policy settings: adapt, ttft_budget_s, prefill_high, decode_high, "
        "min_gain, min_dwell_s, chunk_tokens",
    )


def policy_from_args(args: argparse.Namespace) -> PolicySettings:
    """Defaults (adaptation on), then the --policy file, then --adapt."""
    settings = PolicySettings(adapt=True)
    if args.policy:
        settings = settings_from_dict(read_yaml_mapping(args.policy, "policy"), args.policy, settings)
    if args.adapt is not None:
        settings = dataclasses.replace(settings, adapt=args.adapt == "on")
    return settings

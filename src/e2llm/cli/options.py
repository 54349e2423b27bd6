"""The CLI's one vocabulary: flags that several commands share are spelled, defaulted and
checked here, and lower layers' parameter names are mapped to the flags that set them.

- `--seed`: the workload's own seed unless given (requests and planners alike).
- `--dtype`: `fp32`, `bf16`, `fp16`, or torch's spellings `float32`, `bfloat16`, `float16`.
- `--device`: `cpu`, `cuda`, `mps` (`serve` also takes `auto`: resolved on each worker).
- `--out`: a file where a command writes one (`plan` PLAN.json, `profile` profile.json), a
  folder where it writes many (`simulate`, `compare`, `bench`: metrics.json, CSVs, plots).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from e2llm.errors import InputError

DEVICES = ("cpu", "cuda", "mps")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # our spelling -> torch's

# Parameter names that lower layers put in `InputError.where` -> the flag that sets them.
FLAGS = {
    "system": "--system",
    "exhaustive": "--exhaustive",
    "precision": "--precision",
    "interval_s": "--interval",
    "rate_per_s": "--rate",
    "interval_s/rate_per_s": "--interval/--rate",
    "requests": "--requests",
    "model": "--model",
    "ray_address": "--ray-address",
    "api_key": "--api-key",
    "drift_threshold": "--drift-threshold",
    "drift_window_s": "--drift-window",
    "drift_hold_s": "--drift-hold",
    "scale": "--scale",
    "memory_scale": "--memory-scale",
    "cpu_budget_cores": "--cpu-budget",
}


def with_flag(error: InputError) -> InputError:
    """`error` as the CLI reports it: a parameter name replaced by its flag."""
    flag = FLAGS.get(error.where)
    return error if flag is None else error.renamed(flag)


def add_workload(p: argparse.ArgumentParser, required: bool = True, what: str = "") -> None:
    p.add_argument(
        "--workload",
        required=required,
        metavar="W",
        help=f"workload YAML or Azure-format trace CSV{what}",
    )


def add_arrivals(p: argparse.ArgumentParser, what: str = "") -> argparse._MutuallyExclusiveGroup:
    """`--interval` / `--rate` (at most one); the group, for commands that add `--sweep` to it."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--interval", type=float, metavar="S", help=f"mean seconds between arrivals{what}")
    g.add_argument("--rate", type=float, metavar="R", help=f"mean arrivals per second{what}")
    return g


def add_precision(p: argparse.ArgumentParser, what: str = "weight precision override") -> None:
    p.add_argument("--precision", metavar="P", help=f"{what}: bf16, fp16, int8, q4, mxfp4, fp32")


def add_mixed(p: argparse.ArgumentParser) -> None:
    """`--mixed on|off`: may e2llm's planner assign MIXED replicas (default on: our extension;
    off gives the method's PREFILL/DECODER roles only)."""
    p.add_argument(
        "--mixed",
        choices=("on", "off"),
        default="on",
        help="may e2llm assign MIXED replicas (both phases, chunked prefill; our extension of the "
        "method, chosen only where it scores better)? default on; off: PREFILL/DECODER only, the method",
    )


def add_seed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--seed", type=int, metavar="N", help=f"seed for {what} (default: the workload's)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu", auto: bool = False) -> None:
    choices = (*DEVICES, "auto") if auto else DEVICES
    p.add_argument(
        "--device",
        default=default,
        metavar="{" + ",".join(choices) + "}",
        help="torch device (default %(default)s)",
    )


def device_choice(value: str, auto: bool = False) -> str:
    return choice("--device", value, (*DEVICES, "auto") if auto else DEVICES)


def add_dtype(p: argparse.ArgumentParser, default: str | None, default_help: str = "%(default)s") -> None:
    p.add_argument(
        "--dtype",
        default=default,
        metavar="{" + ",".join(DTYPES) + "}",
        help=f"weights and activations (or float32, bfloat16, float16; default {default_help})",
    )


def dtype_choice(value: str) -> str:
    """The `--dtype` in our spelling (fp32, bf16, fp16), whichever spelling was given."""
    by_torch_name = {torch_name: name for name, torch_name in DTYPES.items()}
    return by_torch_name.get(value) or choice("--dtype", value, tuple(DTYPES) + tuple(by_torch_name))


def choice(flag: str, value: str, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, else one line naming the flag (argparse's own
    `choices` would print the whole usage)."""
    if value not in choices:
        raise InputError(flag, f"must be one of {', '.join(choices)}", value)
    return value

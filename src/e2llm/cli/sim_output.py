"""What `e2llm simulate` and `e2llm compare` share: load sweeps, JSON, tables and the --out folder."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2llm.cli.options import add_arrivals, add_seed
from e2llm.errors import InputError
from e2llm.plan.plan_json import plan_to_dict
from e2llm.report.csv_out import write_requests_csv
from e2llm.report.plan_figure import plan_figure
from e2llm.report.plots import plot_cdfs, plot_sweep, plot_utilisation
from e2llm.report.table import metrics_table
from e2llm.sim.compare import Load, Run


def add_load_arguments(p: argparse.ArgumentParser, seeded: str = "the requests") -> None:
    add_seed(p, seeded)
    add_arrivals(p).add_argument(
        "--sweep",
        metavar="LIST",
        help="comma-separated intervals in seconds (e.g. 0.5,1,2,3), or 'rate:' and rates (rate:1,2,4)",
    )
    p.add_argument("--requests", type=int, metavar="N", help="number of requests (default: the workload's)")
    p.add_argument("--json", action="store_true", help="print the metrics JSON instead of a table")
    p.add_argument(
        "--out", metavar="DIR", help="also write metrics.json, per-request CSVs and PNG plots here"
    )


def loads_from_args(args: argparse.Namespace) -> list[Load]:
    if args.interval is not None:
        return [Load(interval_s=_positive("--interval", args.interval))]
    if args.rate is not None:
        return [Load(rate_per_s=_positive("--rate", args.rate))]
    if not args.sweep:
        return [Load()]
    text = args.sweep.strip()
    is_rate = text.startswith("rate:")
    values = []
    for item in (text[5:] if is_rate else text).split(","):
        try:
            values.append(_positive("--sweep", float(item)))
        except ValueError:
            raise InputError("--sweep", "must be comma-separated positive numbers", args.sweep) from None
    return [Load(rate_per_s=v) if is_rate else Load(interval_s=v) for v in values]


def _positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InputError(name, "must be a positive number", value)
    return value


def _load_json(load: Load) -> dict[str, float]:
    if load.interval_s is not None:
        return {"interval_s": load.interval_s}
    if load.rate_per_s is not None:
        return {"rate_per_s": load.rate_per_s}
    return {}


def simulate_json(runs: Sequence[Run]) -> dict[str, Any]:
    """One run: its metrics object. A sweep: {"sweep": [{load..., metrics...}, ...]}."""
    if len(runs) == 1:
        return runs[0].metrics
    return {"sweep": [{**_load_json(r.load), **r.metrics} for r in runs]}


def compare_json(runs: Sequence[Run], loads: Sequence[Load]) -> dict[str, Any]:
    """One load: {"systems": {name: {metrics..., "plan": {...}}}};
    a sweep: {"sweep": [{load..., "systems": {...}}, ...]}."""
    per_load = []
    for load in loads:
        systems = {r.system: {**r.metrics, "plan": plan_to_dict(r.plan)} for r in runs if r.load == load}
        per_load.append({**_load_json(load), "systems": systems})
    if len(per_load) == 1:
        return {"systems": per_load[0]["systems"]}
    return {"sweep": per_load}


def print_table(runs: Sequence[Run], loads: Sequence[Load]) -> None:
    for load in loads:
        rows = [(r.system, r.metrics) for r in runs if r.load == load]
        if len(loads) > 1 or load != Load():
            print(f"\n{load.label}")
        print(metrics_table(rows))


def out_folder(out: str) -> Path:
    """The `--out` folder, created if missing; an InputError if it cannot be."""
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError("--out", f"cannot create the folder: {e.strerror}", out) from None
    return d


def write_out(out: str, runs: Sequence[Run], loads: Sequence[Load], devices: Sequence[str], doc: Any) -> None:
    """metrics.json, requests_<system>_<load>.csv, utilisation_<system>_<load>.png,
    plan_<system>_<load>.png (the plan simulated), cdf_<load>.png and, for a sweep, sweep.png."""
    d = out_folder(out)
    (d / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    for load in loads:
        tag = _tag(load)
        here = [r for r in runs if r.load == load]
        for r in here:
            write_requests_csv(r.result.records, d / f"requests_{r.system}_{tag}.csv")
            plot_utilisation(
                r.result.busy,
                devices,
                r.result.end_s,
                d / f"utilisation_{r.system}_{tag}.png",
                f"{r.system}, {load.label}",
            )
            figure = plan_figure(r.plan)
            figure.savefig(d / f"plan_{r.system}_{tag}.png", dpi=120)
        plot_cdfs({r.system: r.result.records for r in here}, d / f"cdf_{tag}.png", load.label)
    if len(loads) > 1:
        systems = list(dict.fromkeys(r.system for r in runs))
        is_rate = loads[0].rate_per_s is not None
        xs = [(ld.rate_per_s if is_rate else ld.interval_s) or 0.0 for ld in loads]
        series = {
            s: [next(r.metrics for r in runs if r.system == s and r.load == ld) for ld in loads]
            for s in systems
        }
        plot_sweep(xs, series, "arrival rate (1/s)" if is_rate else "arrival interval (s)", d / "sweep.png")


def _tag(load: Load) -> str:
    if load.interval_s is not None:
        return f"interval{load.interval_s:g}s"
    if load.rate_per_s is not None:
        return f"rate{load.rate_per_s:g}"
    return "default"

"""Calibrate the llama.cpp edge efficiencies (cost/roofline.py) to published llama.cpp speeds.

The evidence (cost/edge_evidence.py: prompt-processing and generation rates of llama.cpp on
Apple silicon, NVIDIA GeForce cards and Jetson AGX Orin, each with its source URL) is compared
with the roofline's prediction for the committed presets (`LLAMA_CPP_METAL`, `LLAMA_CPP_CUDA`,
`LLAMA_CPP_JETSON`, and the pooled `LLAMA_CPP`). Then, with `--fit`, the factors are refitted
from a neutral start by coordinate descent over multiplicative grids, minimising the mean
|log(predicted/measured)|: `compute` and `memory` per vendor class, the call overheads
(`layer_call_s`, `prefill_expert_call_s`) shared by all classes, and a pooled fit of all six over all
points. Finally the GPT-OSS-20B speeds the E2LLM paper reports for its testbed are set beside
what the calibrated model predicts for single-device replicas of that testbed (a sanity check,
not fitted to). `--loo` refits without each point in turn and predicts it (out of sample).

    .venv/bin/python benchmarks/calibrate_edge.py [--fit] [--loo]
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

from e2llm.cost.build import build_cost_model
from e2llm.cost.edge import EDGE_BY_VENDOR
from e2llm.cost.edge_evidence import POINTS, EvidencePoint, Vendor, predicted_tok_s
from e2llm.cost.model import CostModel
from e2llm.cost.roofline import LLAMA_CPP, Efficiency
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model

VENDORS: tuple[Vendor, ...] = ("metal", "cuda", "jetson")
GRID = (0.5, 0.7, 0.85, 0.93, 1.0, 1.07, 1.18, 1.4, 2.0)


def log_error(point: EvidencePoint, eff: Efficiency) -> float:
    return math.log(predicted_tok_s(point, eff) / point.measured_tok_s)


def score(points: Sequence[EvidencePoint], eff_of: Callable[[EvidencePoint], Efficiency]) -> float:
    return statistics.fmean(abs(log_error(p, eff_of(p))) for p in points)


def _clamp(name: str, value: float) -> float:
    return min(value, 1.0) if name in ("compute", "memory") else value


def fit(points: Sequence[EvidencePoint], pooled: bool) -> dict[Vendor, Efficiency]:
    """Coordinate descent from a neutral start. `pooled`: one Efficiency for every point;
    otherwise compute/memory per vendor and the call overheads shared."""
    start = Efficiency(
        compute=0.5, memory=0.5, layer_call_s=20e-6, head_call_s=20e-6, prefill_expert_call_s=5e-6
    )
    effs: dict[Vendor, Efficiency] = {v: start for v in VENDORS}

    def eff_of(p: EvidencePoint) -> Efficiency:
        return effs["metal" if pooled else p.vendor]

    shared = ("layer_call_s", "prefill_expert_call_s")
    own = ("compute", "memory")
    best = score(points, eff_of)
    for _ in range(40):
        improved = False
        groups: list[tuple[str, tuple[Vendor, ...]]] = [(f, VENDORS) for f in shared]
        groups += [(f, VENDORS) if pooled else (f, (v,)) for f in own for v in VENDORS]
        if pooled:
            groups = list(dict.fromkeys(groups))
        for name, vendors in groups:
            base = getattr(effs[vendors[0]], name)
            for factor in GRID:
                trial = _clamp(name, base * factor)
                saved = dict(effs)
                for v in vendors:
                    effs[v] = replace(effs[v], **{name: trial})  # type: ignore[arg-type]
                s = score(points, eff_of)
                if s < best - 1e-9:
                    best, improved = s, True
                else:
                    effs.update(saved)
        if not improved:
            break
    for v in VENDORS:  # the head is one more call, like a layer
        effs[v] = replace(effs[v], head_call_s=effs[v].layer_call_s)
    return effs


def print_table(title: str, eff_of: Callable[[EvidencePoint], Efficiency]) -> None:
    print(f"\n## {title}\n")
    print("| point | measured tok/s | predicted tok/s | error |")
    print("|---|---:|---:|---:|")
    errors = []
    for p in POINTS:
        pred = predicted_tok_s(p, eff_of(p))
        errors.append(abs(pred / p.measured_tok_s - 1))
        print(f"| {p.label} | {p.measured_tok_s:,.1f} | {pred:,.1f} | {pred / p.measured_tok_s - 1:+.0%} |")
    by_vendor = {v: [e for p, e in zip(POINTS, errors, strict=True) if p.vendor == v] for v in VENDORS}
    parts = [f"{v} {statistics.median(es):.0%}" for v, es in by_vendor.items()]
    print(f"\nmedian |error|: all {statistics.median(errors):.0%}; " + ", ".join(parts))


# Replicas of the paper testbed seen in our plans (experiments/paper/results.md): the devices
# in pipeline order with their layer counts (GPT-OSS-20B has 24).
REPLICAS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("Jetson alone (e2llm's PREFILL)", (("dev7", 24),)),
    ("RTX 5070 + M1 (Splitwise's prompt replica)", (("dev1", 22), ("dev2", 2))),
    ("M2 Max alone", (("dev5", 24),)),
    ("RTX 3060 + RTX 5070", (("dev4", 9), ("dev1", 15))),
    ("M1 + RTX 3060 (Splitwise's slow decoder)", (("dev3", 16), ("dev4", 8))),
)


def replica_rates(
    cost: CostModel, stages: tuple[tuple[str, int], ...], tokens: int, batch: int
) -> tuple[float, float]:
    """(prefill tok/s of one `tokens` prompt, generated tok/s per request at `batch` sequences
    of context ~1000) through the pipeline `stages`, hops included: a prompt crosses every stage
    in turn; one decode step of the batch laps the pipeline."""
    last = len(stages) - 1
    pre = dec = 0.0
    for i, (name, n) in enumerate(stages):
        ends = {"embedding": i == 0, "lm_head": i == last}
        pre += cost.stage_prefill_s(name, n, tokens, **ends)
        dec += cost.stage_decode_s(name, n, batch, 1000, **ends)
        if i < last:
            pre += cost.hop_s(name, stages[i + 1][0], tokens)
            dec += cost.hop_s(name, stages[i + 1][0], batch)
    return tokens / pre, 1.0 / dec


def paper_check() -> None:
    """GPT-OSS-20B speeds of replicas of the paper's testbed beside the paper's numbers."""
    cost = build_cost_model(load_model("gpt-oss-20b"), load_cluster("examples/clusters/paper-testbed.yaml"))
    print("\n## Paper sanity check (GPT-OSS-20B on paper-testbed replicas; per-vendor presets)\n")
    print("paper: prefill 452.8 (E2LLM) / 468.4 (Splitwise) tok/s per request at 2.0 s;")
    print("       generation 30.0 (E2LLM) / 12.1 (Splitwise) tok/s per request at 3.0 s\n")
    print(
        "| replica | prefill 576 tok | prefill 2284 tok | per-request decode, batch 1 | batch 8 | batch 16 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, stages in REPLICAS:
        p576, d1 = replica_rates(cost, stages, 576, 1)
        p2284, _ = replica_rates(cost, stages, 2284, 1)
        d8, d16 = (replica_rates(cost, stages, 576, b)[1] for b in (8, 16))
        print(f"| {label} | {p576:,.0f} | {p2284:,.0f} | {d1:.1f} | {d8:.1f} | {d16:.1f} |")


def leave_one_out() -> None:
    """Refit the per-vendor factors without each point in turn and predict the left-out point."""
    print("\n## Leave-one-out (per-vendor fit without the point, then predict it)\n")
    print("| left out | measured tok/s | predicted tok/s | error |")
    print("|---|---:|---:|---:|")
    errors = []
    for i, p in enumerate(POINTS):
        effs = fit(POINTS[:i] + POINTS[i + 1 :], pooled=False)
        pred = predicted_tok_s(p, effs[p.vendor])
        errors.append(abs(pred / p.measured_tok_s - 1))
        print(f"| {p.label} | {p.measured_tok_s:,.1f} | {pred:,.1f} | {pred / p.measured_tok_s - 1:+.0%} |")
    print(f"\nmedian |error| held out: {statistics.median(errors):.0%}")


def chosen_for(effs: dict[Vendor, Efficiency]) -> Callable[[EvidencePoint], Efficiency]:
    return lambda p: effs[p.vendor]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the factors from a neutral start")
    ap.add_argument("--loo", action="store_true", help="leave-one-out check of the per-vendor fit")
    args = ap.parse_args()
    print_table("Committed presets (per vendor class)", lambda p: EDGE_BY_VENDOR[p.vendor])
    print_table("Committed pooled preset LLAMA_CPP (every point)", lambda p: LLAMA_CPP)
    if args.fit:
        for pooled in (False, True):
            effs = fit(POINTS, pooled)
            print(f"\n### fitted ({'pooled' if pooled else 'per vendor'})")
            for v in ("metal",) if pooled else VENDORS:
                print(f"{v}: {effs[v]}")
            chosen = {v: effs["metal" if pooled else v] for v in VENDORS}
            print_table(f"Fitted ({'pooled' if pooled else 'per vendor'})", chosen_for(chosen))
    if args.loo:
        leave_one_out()
    paper_check()


if __name__ == "__main__":
    main()

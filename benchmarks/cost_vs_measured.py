"""Roofline cost model vs per-layer times measured on an NVIDIA H200 (bf16, eager PyTorch).

Reads ../shared/reference/measured/h200-bf16-layer-profile.json (beside the repository), builds
the four model shapes it was measured on, and prints the roofline's prediction, the measurement
and the relative error for every sample, then the median absolute relative error per shape and
overall. The device is the H200 (989 TFLOPS dense bf16, 4.8 TB/s); the engine efficiency is
`EAGER_TORCH` (eager PyTorch + transformers), except that GPT-OSS's layer ran transformers'
eager attention (sinks: no fused kernel), which materialises the score matrix.

`--profile P.json --tflops X --bandwidth-gbs Y` compares instead against the samples of a profile
written by `e2llm profile` on another device (an out-of-sample check of the fitted factors).

`--fit` refits the efficiency factors to the measurements (coordinate descent over a grid,
minimising the mean |log(predicted/measured)|) from a neutral start, prints them, and runs a
leave-one-shape-out check: fit on three shapes, predict the fourth.

    .venv/bin/python benchmarks/cost_vs_measured.py [--json] [--fit]
    .venv/bin/python benchmarks/cost_vs_measured.py --profile h100.json --tflops 989 --bandwidth-gbs 3350
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from e2llm.cost.profile import Profile, load_profile
from e2llm.cost.roofline import EAGER_TORCH, LLAMA_CPP, Efficiency, RooflineTimes
from e2llm.specs.device import Device
from e2llm.specs.model_spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO.parent / "shared" / "reference" / "measured" / "h200-bf16-layer-profile.json"

H200 = Device(name="h200", memory_gb=141.0, tflops=989.0, mem_bandwidth_gbs=4800.0)

# The four shapes as measured: bf16 everywhere, GPT-OSS with bf16 experts and full attention
# (the measurement timed one layer of each; layer counts only matter for sliding windows).
SHAPES: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m", n_layers=30, hidden=576, n_heads=9, n_kv_heads=3, head_dim=64,
        intermediate=1536, vocab=49152, tied_embeddings=True,
    ),
    "qwen2.5-1.5b": ModelSpec(
        name="qwen2.5-1.5b", n_layers=28, hidden=1536, n_heads=12, n_kv_heads=2, head_dim=128,
        intermediate=8960, vocab=151936, tied_embeddings=True,
    ),
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b", n_layers=32, hidden=4096, n_heads=32, n_kv_heads=8, head_dim=128,
        intermediate=14336, vocab=128256,
    ),
    "gpt-oss-20b": ModelSpec(
        name="gpt-oss-20b", n_layers=24, hidden=2880, n_heads=64, n_kv_heads=8, head_dim=64,
        intermediate=2880, vocab=201088, n_experts=32, experts_per_token=4,
    ),
}  # fmt: skip


def efficiency_for(shape: str) -> Efficiency:
    """EAGER_TORCH, plus materialised attention scores for GPT-OSS (eager attention with sinks)."""
    if shape == "gpt-oss-20b":
        return replace(EAGER_TORCH, attn_score_bytes=EAGER_ATTN_SCORE_BYTES)
    return EAGER_TORCH


# Memory traffic per attention score of transformers' eager attention (fitted, `--fit`): the
# full T x T bf16 score matrix per head is written by QKᵀ, then masked, concatenated with the sink
# logits, max-subtracted, softmaxed, sliced and read by PV: ~8 passes of read+write, plus the
# mask and the repeat_kv copies. What flash attention avoids.
EAGER_ATTN_SCORE_BYTES = 70.0


@dataclass(frozen=True)
class Row:
    shape: str
    kind: str  # prefill / decode / head
    point: str
    predicted_ms: float
    measured_ms: float

    @property
    def rel_error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


def compare(data: dict, effs: dict[str, Efficiency] | None = None) -> list[Row]:
    """One Row per measured sample of every shape in `data`."""
    rows = []
    for shape, meas in data["shapes"].items():
        m = SHAPES[shape]
        eff = effs[shape] if effs else efficiency_for(shape)
        t = RooflineTimes(H200, m, eff)
        for tok, ms in meas["prefill_ms"].items():
            rows.append(Row(shape, "prefill", f"T={tok}", t.layer_prefill_s(int(tok)) * 1e3, ms))
        for key, ms in meas["decode_ms"].items():
            b, c = (int(x[1:]) for x in key.split("_"))
            rows.append(Row(shape, "decode", f"B={b},C={c}", t.layer_decode_s(b, c) * 1e3, ms))
        for tok, ms in meas["lm_head_ms"].items():
            rows.append(Row(shape, "head", f"T={tok}", t.head_s(int(tok)) * 1e3, ms))
    return rows


def compare_profile(profile: Profile, device: Device, eff: Efficiency) -> list[Row]:
    """One Row per sample of an `e2llm profile` JSON, against the roofline of `device`."""
    t = RooflineTimes(device, profile.model, eff)
    name, s = profile.model.name, profile.samples
    rows = [Row(name, "prefill", f"T={n}", t.layer_prefill_s(n) * 1e3, x * 1e3) for n, x in s.prefill]
    rows += [
        Row(name, "decode", f"B={b},C={c}", t.layer_decode_s(b, c) * 1e3, x * 1e3) for b, c, x in s.decode
    ]
    rows += [Row(name, "head", f"T={n}", t.head_s(n) * 1e3, x * 1e3) for n, x in s.head]
    return rows


def median_abs(rows: list[Row]) -> float:
    return statistics.median(abs(r.rel_error) for r in rows)


def summary(rows: list[Row]) -> dict[str, float]:
    """Median absolute relative error per shape, per kind of call, and overall."""
    shapes = dict.fromkeys(r.shape for r in rows)
    out = {shape: median_abs([r for r in rows if r.shape == shape]) for shape in shapes}
    for kind in ("prefill", "decode", "head"):
        out[kind] = median_abs([r for r in rows if r.kind == kind])
    out["overall"] = median_abs(rows)
    return out


# Search range of each efficiency field for `--fit` (41 grid points each).
FIT_RANGES = {
    "compute": (0.2, 1.0),
    "memory": (0.3, 1.0),
    "layer_call_s": (0.0, 1e-3),
    "head_call_s": (0.0, 3e-4),
    "moe_call_s": (0.0, 2e-3),
    "expert_call_s": (0.0, 1e-4),
    "kv_traffic": (1.0, 30.0),
    "attn_score_bytes": (0.0, 200.0),  # applied to gpt-oss-20b only (see efficiency_for)
}
PRESETS = {"eager-torch": EAGER_TORCH, "llama-cpp": LLAMA_CPP}
PURE_ROOFLINE = Efficiency(compute=1.0, memory=1.0, layer_call_s=0.0, head_call_s=0.0)
NEUTRAL = Efficiency(compute=0.5, memory=0.5, layer_call_s=0.0, head_call_s=0.0)


def _effs(eff: Efficiency, score: float, shapes: list[str]) -> dict[str, Efficiency]:
    return {s: replace(eff, attn_score_bytes=score) if s == "gpt-oss-20b" else eff for s in shapes}


def _loss(data: dict, effs: dict[str, Efficiency]) -> float:
    rows = compare(data, effs)
    return statistics.mean(abs(math.log(r.predicted_ms / r.measured_ms)) for r in rows)


def fit(data: dict, shapes: list[str], rounds: int = 5) -> tuple[Efficiency, float]:
    """Efficiency (and GPT-OSS's attn_score_bytes) minimising the mean |log error| on `shapes`."""
    sub = {"shapes": {s: data["shapes"][s] for s in shapes}}
    eff, score = NEUTRAL, 0.0
    best = _loss(sub, _effs(eff, score, shapes))
    names = [f.name for f in fields(Efficiency)]
    assert set(FIT_RANGES) == set(names)
    for _ in range(rounds):
        for name, (lo, hi) in FIT_RANGES.items():
            for k in range(41):
                v = lo + (hi - lo) * k / 40
                try:
                    e2, s2 = (eff, v) if name == "attn_score_bytes" else (replace(eff, **{name: v}), score)
                except ValueError:  # outside Efficiency's valid range (e.g. compute = 0)
                    continue
                loss = _loss(sub, _effs(e2, s2, shapes))
                if loss < best - 1e-12:
                    best, eff, score = loss, e2, s2
    return eff, score


def run_fit(data: dict) -> None:
    shapes = list(SHAPES)
    eff, score = fit(data, shapes)
    values = ", ".join(
        f"{f.name}={getattr(eff, f.name):.4g}" for f in fields(Efficiency) if f.name != "attn_score_bytes"
    )
    print(f"fitted on all shapes: {values}; gpt-oss-20b attn_score_bytes={score:g}")
    in_sample = summary(compare(data, _effs(eff, score, shapes)))
    print("in-sample median abs error: " + ", ".join(f"{k} {v:.1%}" for k, v in in_sample.items()))
    print("\n| held-out shape | median abs error (fit on the other three) |\n|---|---:|")
    for held in shapes:
        eff_h, score_h = fit(data, [s for s in shapes if s != held])
        rows = [r for r in compare(data, _effs(eff_h, score_h, shapes)) if r.shape == held]
        print(f"| {held} | {median_abs(rows):.1%} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print rows and summary as JSON")
    ap.add_argument("--fit", action="store_true", help="refit the efficiency factors, leave-one-shape-out")
    ap.add_argument("--profile", help="compare against this `e2llm profile` JSON instead of the H200 data")
    ap.add_argument("--tflops", type=float, help="with --profile: the device's peak TFLOP/s")
    ap.add_argument("--bandwidth-gbs", type=float, help="with --profile: the device's peak GB/s")
    ap.add_argument("--efficiency", choices=sorted(PRESETS), default="eager-torch", help="with --profile")
    args = ap.parse_args(argv)
    if args.profile:
        if not (args.tflops and args.bandwidth_gbs):
            ap.error("--profile needs --tflops and --bandwidth-gbs (the device's spec sheet)")
        profile = load_profile(args.profile)
        device = Device(profile.device_name, 0.0, args.tflops, args.bandwidth_gbs)
        eff = PRESETS[args.efficiency]
        rows = compare_profile(profile, device, eff)
        pure_rows = compare_profile(profile, device, PURE_ROOFLINE)
    else:
        data = json.loads(MEASURED.read_text())
        if args.fit:
            run_fit(data)
            return 0
        rows = compare(data)
        pure_rows = compare(data, {s: PURE_ROOFLINE for s in data["shapes"]})
    summ = summary(rows)
    if args.json:
        print(json.dumps({"rows": [r.__dict__ | {"rel_error": r.rel_error} for r in rows], "summary": summ}))
        return 0
    print("| shape | call | point | predicted ms | measured ms | error |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.shape} | {r.kind} | {r.point} | {r.predicted_ms:.3f} | {r.measured_ms:.3f} "
            f"| {r.rel_error:+.0%} |"
        )
    pure = summary(pure_rows)
    print()
    print(
        f"| median abs error | {args.efficiency if args.profile else 'eager-torch'} | pure roofline (peak) |"
    )
    print("|---|---:|---:|")
    for k, v in summ.items():
        print(f"| {k} | {v:.1%} | {pure[k]:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

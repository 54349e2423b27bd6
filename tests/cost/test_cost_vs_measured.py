"""The roofline (EAGER_TORCH efficiency) against per-layer times measured on an H200.

The data lives outside the repository, in ../shared/reference/measured/ beside the clone (the
same relative place on CI); the comparison itself is benchmarks/cost_vs_measured.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MEASURED = REPO.parent / "shared" / "reference" / "measured" / "h200-bf16-layer-profile.json"


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "cost_vs_measured", REPO / "benchmarks" / "cost_vs_measured.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_median_abs_error_within_30_percent() -> None:
    assert MEASURED.is_file(), f"measured reference data missing: {MEASURED}"
    bench = _benchmark()
    rows = bench.compare(json.loads(MEASURED.read_text()))
    assert len(rows) == 4 * (5 + 6 + 3)  # every sample of every shape compared
    summary = bench.summary(rows)
    assert summary["overall"] <= 0.30, summary
    for shape in bench.SHAPES:
        assert summary[shape] <= 0.30, (shape, summary)


def test_benchmark_shapes_match_the_measured_layers() -> None:
    """The ModelSpecs built for the comparison have the measured parameter counts (within the
    biases ModelSpec does not model: Qwen's QKV bias, GPT-OSS's expert biases and sinks)."""
    bench = _benchmark()
    data = json.loads(MEASURED.read_text())["shapes"]
    for name, spec in bench.SHAPES.items():
        assert spec.layer_params == pytest.approx(data[name]["layer_params"], rel=1e-3), name

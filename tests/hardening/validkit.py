"""Valid starting points for the mutation corpus: example clusters and workloads, a hand-built
plan for the built-in small model, and the first rows of the real Azure conversation trace."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from e2llm.plan.plan_json import plan_to_dict
from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.specs.device import Cluster, Device, Link
from e2llm.specs.model_catalog import load_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TRACE = ROOT.parent / "shared" / "traces" / "azure-2023-conv.csv"
MODEL = "smollm2-135m"

# A small synthetic workload so that a valid mutant simulates in milliseconds.
SMALL_WORKLOAD = """requests: 8
seed: 3
arrival: {process: poisson, rate_per_s: 2}
input_tokens: {dist: uniform, min: 16, max: 64}
output_tokens: {dist: fixed, value: 8}
min_decode_tok_s: 1
"""

_names = itertools.count()


def write_unique(folder: Path, content: bytes, suffix: str) -> Path:
    """A new file per mutant: traces are cached per (path, mtime, size), so never reuse a name."""
    p = folder / f"m{next(_names)}{suffix}"
    p.write_bytes(content)
    return p


def example_yaml(kind: str, name: str) -> Any:
    return yaml.safe_load((EXAMPLES / kind / name).read_text())


def plan_doc() -> dict[str, Any]:
    """A valid disaggregated plan of SmolLM2-135M on three devices: PREFILL on a+b, DECODER on c."""
    spec = load_model(MODEL)
    n = spec.n_layers
    devices = tuple(Device(d, memory_gb=2.0, tflops=1.0, mem_bandwidth_gbs=50.0) for d in ("a", "b", "c"))
    cluster = Cluster(
        devices=devices, default_link=Link(1000.0, 0.5), links={frozenset(("a", "c")): Link(100.0, 2.0)}
    )
    prefill = Replica(
        0,
        Role.PREFILL,
        (
            Stage("a", 0, n // 2, embedding=True, memory_gb=0.9),
            Stage("b", n // 2, n, lm_head=True, memory_gb=0.9),
        ),
        prefill_tok_s=100.0,
        bottleneck_device="b",
    )
    decoder = Replica(
        1,
        Role.DECODER,
        (Stage("c", 0, n, embedding=True, lm_head=True, memory_gb=1.5),),
        concurrency=4,
        decode_tok_s_per_request=10.0,
        bottleneck_device="c",
    )
    plan = Plan(
        system="hand",
        model=spec.name,
        objective=0.5,
        objective_kind="bottleneck_s",
        replicas=(prefill, decoder),
        cluster=cluster,
        model_spec=spec,
    )
    return plan_to_dict(plan)


def trace_head(rows: int = 40) -> str:
    """Header plus the first `rows` rows of the Azure conversation trace."""
    with TRACE.open() as f:
        return "".join(itertools.islice(f, rows + 1))

"""How fast the inputs load: Azure trace parsing, request generation, GGUF header, cluster YAML.

Load sweeps re-read the same inputs for every point, so these must stay far below the planner and
simulator times. Prints the median of `--repeat` runs (trace parsing is timed with the cache
cleared each run).

    .venv/bin/python benchmarks/specs_inputs.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from e2llm.specs import trace as trace_module
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.model_catalog import load_model, smollm2_gguf_path
from e2llm.specs.workload import generate_requests
from e2llm.specs.workload_file import load_workload

ROOT = Path(__file__).resolve().parents[1]
CONV = ROOT.parent / "shared" / "traces" / "azure-2023-conv.csv"


def median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat

    def parse_conv() -> object:
        trace_module._load_cached.cache_clear()
        return trace_module.load_trace(CONV)

    testbed = ROOT / "examples" / "clusters" / "paper-testbed.yaml"
    replay = load_workload(ROOT / "examples" / "workloads" / "azure-conv.yaml")
    synthetic = load_workload(ROOT / "examples" / "workloads" / "longreason-extended.yaml", requests=19366)
    rows = [
        ("parse azure-2023-conv.csv (19,366 rows, uncached)", parse_conv),
        ("generate 19,366 requests (conv replay)", lambda: generate_requests(replay)),
        ("generate 19,366 requests (lognormal + fixed)", lambda: generate_requests(synthetic)),
        ("read SmolLM2 GGUF header -> ModelSpec", lambda: load_model(smollm2_gguf_path())),
        ("load paper-testbed.yaml", lambda: load_cluster(testbed)),
    ]
    for label, fn in rows:
        print(f"{label:55s} {median_s(fn, repeat) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()

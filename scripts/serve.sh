#!/usr/bin/env bash
# Set everything up, then run the main job: serve the built-in SmolLM2-135M on a local emulated
# cluster (planned by e2llm) with an OpenAI-compatible API on http://127.0.0.1:8000.
# Extra arguments go to `e2llm serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/e2llm serve "$@"

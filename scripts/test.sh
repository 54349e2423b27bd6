#!/usr/bin/env bash
# Set everything up, then lint, type-check and run the whole test suite (slow tests included).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the fast part only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The dashboard's browser test drives Debian's Chromium through its ChromeDriver.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromium / chromium-driver missing and not root: the browser test will be skipped" >&2
  fi
fi
.venv/bin/ruff check src tests benchmarks experiments
.venv/bin/ruff format --check src tests benchmarks experiments
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"

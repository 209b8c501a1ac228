#!/usr/bin/env bash
# The test command: set up, lint, run the default test suite, then check that the wheel installs into a
# clean virtual environment and works with the source tree out of reach.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest (default suite: slow tests excluded)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "[test] wheel in a clean venv"
bash scripts/check_wheel.sh

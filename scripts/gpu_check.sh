#!/usr/bin/env bash
# Every GPU check in one command, for a short loan of a bare GPU machine (no network): builds the package
# with the preinstalled toolchain, runs the CUDA tests with the Triton interpreter off, the GPU benchmarks
# in a short mode and the tiny end-to-end runs on cuda; writes JSON per part and a summary table into OUT.
# Without a CUDA device (or with --cpu-only) the same parts run on the CPU at tiny sizes.
#
#   bash scripts/gpu_check.sh OUT [--cpu-only] [--skip-build] [--only tests,guidance] [--budget tests=200]
#
# The interpreter: $PYTHON if set, else ./.venv/bin/python if present, else python3. Details and the
# list of parts: scripts/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
exec "$py" scripts/gpu_check.py "$@"

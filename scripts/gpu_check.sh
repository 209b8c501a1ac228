#!/usr/bin/env bash
# Every GPU check in one command, for a short loan of a bare GPU machine (no network): builds the package
# with the preinstalled toolchain, runs the CUDA tests with the Triton interpreter off, the GPU benchmarks
# in a short mode and the tiny end-to-end runs on cuda; writes JSON per part and a summary table into OUT.
# Without a CUDA device (or with --cpu-only) the same parts run on the CPU at tiny sizes.
#
#   bash scripts/gpu_check.sh OUT [--cpu-only] [--skip-build] [--only tests,guidance] [--budget tests=200]
#
# The interpreter: $PYTHON if set, else ./.venv/bin/python if present, else the first of python3, python
# that imports torch. Details and the list of parts: scripts/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ] && [ -x .venv/bin/python ]; then
  py=.venv/bin/python
fi
if [ -z "$py" ]; then  # the first interpreter on PATH that has torch (the machine's preinstalled one)
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      py=$candidate
      break
    fi
  done
fi
if [ -z "$py" ]; then
  echo "gpu_check: no Python with torch found (set PYTHON=/path/to/python)" >&2
  exit 2
fi
exec "$py" scripts/gpu_check.py "$@"

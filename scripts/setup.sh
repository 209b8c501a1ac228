#!/usr/bin/env bash
# Set up the development environment in ./.venv (idempotent): CPU PyTorch pinned, build tools, the
# package built and installed in editable mode with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
# Pin the CPU build of torch: a bare 'torch' would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  pip_install torch==2.13.0
fi
echo "[setup] installing build and dev dependencies"
pip_install "scikit-build-core>=0.10" "pybind11>=2.12" ninja "numpy>=1.24" "safetensors>=0.4" "tqdm>=4.60" \
  "matplotlib>=3.7" "pyyaml>=6" "pytest>=7" "hypothesis>=6" "shapely>=2.0" "ruff>=0.5" "triton>=3.0" "nvtx>=0.2"
echo "[setup] building and installing genneg (editable)"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
  | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import genneg, genneg_ext; print('[setup] genneg', genneg.__version__, 'ready')"

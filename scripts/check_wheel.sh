#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv (torch pinned to the CPU build), and run one oracle call
# and one import of every subpackage from a directory outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps . -w "$work/dist" 2>&1 \
  | grep -v '^WARNING: Location' || true
wheel=$(ls "$work"/dist/genneg-*.whl)
echo "[wheel] built $(basename "$wheel")"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 "$wheel" 2>&1 \
  | grep -v '^WARNING: Location' || true
cd "$work"
"$work/venv/bin/python" - <<'PY'
import numpy as np
import genneg, genneg_ext, genneg.kernels
boxes = np.array([[[0, 0, 4, 2, 0], [3, 0, 4, 2, 0], [10, 0, 4, 2, 0]]], dtype=np.float64)
hit = genneg_ext.collisions(boxes)
assert hit.tolist() == [[True, True, False]], hit
assert "site-packages" in genneg_ext.__file__ and "site-packages" in genneg.__file__, (genneg_ext.__file__, genneg.__file__)
print("[wheel] ok: genneg", genneg.__version__, "from", genneg.__file__, "collisions", hit.tolist())
PY

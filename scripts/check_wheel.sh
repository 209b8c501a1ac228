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
# The benchmarks and the example on this plain install (no nvtx, triton or shapely extras): an absent
# optional dependency must turn its feature off with one message, never crash. Copies, so that results
# land in the temporary directory. GENNEG_WHEEL_SCRIPTS=full also runs the minutes-long quick benchmarks.
cp -r "$OLDPWD/benchmarks" "$OLDPWD/examples" "$work/"
echo "[wheel] benchmarks and example on the plain install"
"$work/venv/bin/python" "$work/benchmarks/oracles.py" --quick --no-peers-venv > "$work/oracles.log"
"$work/venv/bin/python" "$work/benchmarks/oracle_kernels.py" --quick > "$work/oracle_kernels.log"
"$work/venv/bin/python" - <<PY
import sys
sys.path.insert(0, "$work/benchmarks")
import guidance  # the NVTX cost probe crashed on a CPU torch without the nvtx extra
print("[wheel] guidance.nvtx_cost:", guidance.nvtx_cost(n=1000))
PY
"$work/venv/bin/python" "$work/examples/planner_loop.py" --cache-dir "$work/planner-cache" --ticks 2 --num-parallel 4 > "$work/planner.log"
if [ "${GENNEG_WHEEL_SCRIPTS:-}" = "full" ]; then
  "$work/venv/bin/python" "$work/benchmarks/guidance.py" --quick
  "$work/venv/bin/python" "$work/benchmarks/latency.py" --quick
fi
echo "[wheel] ok: benchmarks and example ran without the optional extras"

#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of csrc/, run over the extension's tests and the
# fuzz tests. Passes only with 0 sanitizer reports (any report aborts the run: halt_on_error).
#
#   bash scripts/sanitize.sh                 # ~2-4 min on 2 cores (build ~1 min)
#   GENNEG_FUZZ_EXAMPLES=2000 bash scripts/sanitize.sh   # a longer fuzz pass
#
# The sanitized module is built with g++ straight from csrc/ (same sources and warning flags as
# CMakeLists.txt, plus -Werror) into build/sanitize/genneg_ext next to copies of the Python wrappers,
# and imported in place of the installed one (checked before the tests run). LeakSanitizer is off: the
# CPython interpreter itself does not free everything at exit; ASan still reports every invalid access.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=build/sanitize
rm -rf "$out"
mkdir -p "$out/genneg_ext"
cp genneg_ext/*.py genneg_ext/*.pyi genneg_ext/py.typed "$out/genneg_ext/"
suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
py_include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
pybind_include=$("$PY" -c "import pybind11; print(pybind11.get_include())")
version=$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
echo "[sanitize] building csrc/ with -fsanitize=address,undefined"
g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fPIC -shared -pthread \
  -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion -Werror \
  -isystem "$py_include" -isystem "$pybind_include" -Icsrc -DGENNEG_VERSION="\"$version\"" \
  csrc/*.cpp -o "$out/genneg_ext/_C$suffix"
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export GENNEG_SANITIZED_EXT="$PWD/$out"
export GENNEG_FUZZ_EXAMPLES=${GENNEG_FUZZ_EXAMPLES:-400}
log="$out/pytest.log"
echo "[sanitize] running the extension's tests and fuzz tests (log: $log)"
set +e
"$PY" - "$@" <<'PY' 2>&1 | tee "$log"
import os, sys
sys.path.insert(0, os.environ["GENNEG_SANITIZED_EXT"])
# The editable install maps genneg_ext to its build through a meta-path finder that would win over
# sys.path; load the sanitized module and package first so that sys.modules holds them for every import.
import glob
import importlib.util
root = os.path.join(os.environ["GENNEG_SANITIZED_EXT"], "genneg_ext")
def load(name, path, **kw):
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
compiled = load("genneg_ext._C", glob.glob(os.path.join(root, "_C*.so"))[0])  # before the package
module = load("genneg_ext", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
module._C = compiled
import genneg_ext._traffic
assert genneg_ext._traffic._C.__file__.startswith(root), genneg_ext._traffic._C.__file__
print("[sanitize] genneg_ext._C from", compiled.__file__, flush=True)
import pytest
tests = ["tests/ext", "tests/oracles/test_oracle_input_kinds.py", "tests/oracles/test_traffic_oracle.py",
         "tests/oracles/test_drivable_map_rule.py"]
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *tests, *sys.argv[1:]]))
PY
status=${PIPESTATUS[0]}
set -e
reports=$(grep -cE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$log" || true)
echo "[sanitize] pytest exit status $status, sanitizer reports: $reports"
[ "$status" -eq 0 ] && [ "$reports" -eq 0 ]

#!/usr/bin/env bash
# The main job: set up, then run the built-in demo (oracle timings and picture on generated traffic
# scenes, then the quick Gen-neG checkerboard experiment with its report and plots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genneg demo "$@"

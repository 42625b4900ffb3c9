#!/usr/bin/env bash
# The profiler's CUDA-only checks in one short run (scripts/gpu_check.py says what each checks).
#   bash scripts/gpu_check.sh [OUT_DIR]     exit 0: passed; 1: a check failed; 3: no GPU
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" scripts/gpu_check.py "$@"

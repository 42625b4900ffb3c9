#!/usr/bin/env bash
# Idempotent set-up: a .venv beside the repo with the CPU torch wheel and the project (editable).
# Sourced by scripts/test.sh and scripts/main.sh; safe to run again (a no-op once installed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ZOO_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp="$venv/.zoo-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # Pin the CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
  python -m pip install -q "torch==${ZOO_TORCH_VERSION:-2.13.0}"
  python -m pip install -q -e "$root[dev]"
  touch "$stamp"
fi

#!/usr/bin/env bash
# The test command: sets itself up, then runs the whole suite. Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$root/scripts/setup.sh"
cd "$root"
python -m pytest -q "$@"

#!/usr/bin/env bash
# One command for whoever gets a CUDA GPU (issues 13 and 17); under 8 minutes on one H100/H200:
#   bash scripts/gpu_check.sh [OUT_DIR]      exit 0: passed; 1: a step failed; 3: no GPU here
# 1. the profiler's CUDA-only checks (scripts/gpu_check.py);
# 2. a short CUDA sweep: every mixer, 1k..16k, forward and train, fp32 and bf16 (in process,
#    0.1 s of timed calls per cell);
# 3. the tests marked `cuda` (CI skips them with the reason);
# 4. the projection against the measurement (zoo project --against: the calibration table);
# 5. one report: OUT_DIR/REPORT.md (the sweep's report, the calibration table, each step's log).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or torch is missing); run it on a GPU machine" >&2
    exit 3
fi
out="${1:-runs/gpu_check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
# what it needs: the package and its test extra (offline machines: whatever is installed already)
"$py" -c 'import pytest, typer, rich, einops, pandas' 2>/dev/null || "$py" -m pip install -q -e ".[dev]" \
    || echo "gpu_check: could not install the test extra; continuing with what is installed" >&2
"$py" -c 'import ray' 2>/dev/null || "$py" -m pip install -q ray >/dev/null 2>&1 || true

failed=()
step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUT/NAME.log
    local name="$1" limit="$2"; shift 2
    echo "== $name"
    if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (see $out/$name.log)"; failed+=("$name"); fi
}
step core_checks 90 "$py" scripts/gpu_check.py "$out/core"
for dt in fp32 bf16; do
    step "sweep_$dt" 150 "$py" cli.py profile --device cuda --lengths 1k..16k --mode both --dtype "$dt" \
        --no-isolate --time-budget 0.1 --timeout 60 --out "$out/sweep_$dt.jsonl" --overwrite --quiet
done
step cuda_tests 90 "$py" -m pytest -q -m cuda tests/
target="$("$py" -c 'import torch; from profiler.devices import key_for_gpu; print(key_for_gpu(torch.cuda.get_device_name(0)) or "h100")')"
for dt in fp32 bf16; do
    [ -s "$out/sweep_$dt.jsonl" ] && step "calibration_$dt" 90 "$py" cli.py project --device "$target" \
        --against "$out/sweep_$dt.jsonl" --out "$out/projection_$dt.jsonl" --overwrite --report "$out/calibration_$dt.md"
done
step report 60 "$py" cli.py compare "$out"/sweep_fp32.jsonl "$out"/sweep_bf16.jsonl --out "$out/report" --format md

{
    echo "# GPU check ($("$py" -c 'import torch; print(torch.cuda.get_device_name(0))'), $(date -u +%FT%TZ))"
    echo
    echo "Steps failed: ${failed[*]:-none}. Projected numbers are marked as such below."
    echo; echo '## Profiler CUDA checks'; echo; echo '```'; cat "$out/core_checks.log" 2>/dev/null; echo '```'
    echo; echo '## Tests marked cuda'; echo; echo '```'; tail -5 "$out/cuda_tests.log" 2>/dev/null; echo '```'
    for dt in fp32 bf16; do echo; echo "# $dt"; cat "$out/calibration_$dt.md" 2>/dev/null; done
    echo; echo '# Measured sweep (fp32 and bf16)'; echo
    cat "$out"/report/*.md 2>/dev/null
} >"$out/REPORT.md"
echo "report: $out/REPORT.md (${SECONDS} s)"
[ ${#failed[@]} -eq 0 ] || { echo "gpu_check: failed steps: ${failed[*]}" >&2; exit 1; }

#!/usr/bin/env bash
# The README's main command: sets itself up, then
#   1. profiles every registered mixer on the CPU (lengths 256..4k, forward and train, D=256,
#      4 heads, B=1) into runs/cpu.jsonl,
#   2. measures each softmax approximation's error against exact attention (runs/fidelity.jsonl),
#   3. writes the report to reports-out/cpu/ (report.html, report.md, figures, summary.csv).
# A few minutes on 2 cores. One thread, as torch.utils.benchmark: the steadiest numbers on a shared
# machine (pinned to the quietest core; ratios differ with the thread count, which every record states).
# Extra args go to `zoo profile` (e.g. --threads 2, --mixers ponet,softmax).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$root/scripts/setup.sh"
cd "$root"
zoo profile --device cpu --lengths 256..4k --time-budget 0.5 --interleave --threads 1 --out runs/cpu.jsonl --overwrite "$@"
rm -f runs/fidelity.jsonl
zoo fidelity --device cpu --lengths 256..2k --out runs/fidelity.jsonl
zoo compare runs/cpu.jsonl runs/fidelity.jsonl --out reports-out/cpu
echo "report: $root/reports-out/cpu/report.html"

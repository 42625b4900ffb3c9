"""Bad inputs to the benchmark scripts added with the CPU-heap work: one line, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["benchmarks/bench_isolation.py", "--mixers", "ponnet"], {}, "error: mixer: unknown name 'ponnet'. Did you mean 'ponet'"),
        (["benchmarks/bench_isolation.py", "--lengths", "1k..x"], {}, "error: lengths: expected a length like 512"),
        (["benchmarks/bench_isolation.py", "--time-budget", "0"], {}, "error: time budget: expected a positive number"),
        (["benchmarks/bench_kernel.py", "--part", "scaling", "--lengths", "64", "--reps", "1"],
         {"ZOO_BENCH_HEAP": "cachng"}, "error: heap (ZOO_BENCH_HEAP): expected one of tracking, caching, system"),
    ],
)
def test_benchmark_input_errors_are_one_line(args, env, expected):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines

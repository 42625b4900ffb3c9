"""Scaling of the pooling mixers (issue 3): poolingformer, pyramidion, pyramidion_block.

For T = 4k, 8k, 16k (D = 256, 4 heads, B = 1, fp32, CPU) it times forward and forward+backward
of each mixer with every length of every mixer interleaved in the same run, measures the peak
resident growth of one call in a fresh subprocess, and fits the log-log exponent of time and
memory against T. The issue's target: exponent <= 1.15 for both, for every mixer and mode.

    python benchmarks/bench_pooling.py                    # full run, writes bench-out/bench_pooling.json
    python benchmarks/bench_pooling.py --lengths 1024 2048 --reps 3 --no-memory   # smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.compare import Case, compare, fit_exponent, module_step, print_results, save_results  # noqa: E402

MIXERS = ("poolingformer", "pyramidion", "pyramidion_block")
TARGET = 1.15


def build_zoo(mode: str, name: str, T: int, dim: int = 256, heads: int = 4, batch: int = 1, **overrides):
    """A zoo mixer with its default hyper-parameters on a (batch, T, dim) fp32 input."""
    import torch

    from zoo import create_mixer

    torch.manual_seed(0)
    mixer = create_mixer(name, dim=dim, heads=heads, **overrides)
    return module_step(mode, mixer, mixer, torch.randn(batch, T, dim))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=MIXERS)
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the subprocess memory runs")
    args = parser.parse_args(argv)

    cases = [
        Case(f"{name} T={T}", "benchmarks/bench_pooling.py:build_zoo", {"name": name, "T": T})
        for name in args.mixers
        for T in args.lengths
    ]
    results = compare(cases, modes=tuple(args.modes), reps=args.reps, memory=args.memory, threads=args.threads)
    print_results(results)

    ok = True
    print(f"\nfitted log-log exponents over T = {args.lengths} (target <= {TARGET})")
    print("(time: from the medians; time-min: from each case's fastest sample, less sensitive to load)")
    print(f"{'mixer':18s} {'mode':8s} {'time':>6s} {'time-min':>8s} {'memory':>7s}")
    summary = []
    for name in args.mixers:
        for mode in args.modes:
            rows = [r for r in results if r["kwargs"]["name"] == name and r["mode"] == mode]
            rows.sort(key=lambda r: r["kwargs"]["T"])
            lengths = [r["kwargs"]["T"] for r in rows]
            t_exp = fit_exponent(lengths, [r["time_median_s"] for r in rows])
            t_min_exp = fit_exponent(lengths, [min(r["time_samples"]) for r in rows])
            mems = [r.get("mem_peak_bytes") for r in rows]
            m_exp = fit_exponent(lengths, mems) if args.memory and all(mems) else None
            row_ok = t_exp <= TARGET and (m_exp is None or m_exp <= TARGET)
            ok &= row_ok
            mem_txt = f"{m_exp:7.3f}" if m_exp is not None else "      -"
            print(f"{name:18s} {mode:8s} {t_exp:6.3f} {t_min_exp:8.3f} {mem_txt} {'ok' if row_ok else 'ABOVE TARGET'}")
            summary.append(
                {
                    "mixer": name,
                    "mode": mode,
                    "time_exponent": t_exp,
                    "time_min_exponent": t_min_exp,
                    "memory_exponent": m_exp,
                }
            )
    path = save_results(results + [{"exponents": summary, "target": TARGET}], "bench_pooling")
    print(f"\nwrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

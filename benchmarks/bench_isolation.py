"""What per-cell process isolation costs (issue 5): the default sweep's cells, each measured by the
fork-per-cell executor and by the in-process one, side by side in one run.

    python benchmarks/bench_isolation.py                         # the default sweep: all mixers, 1k..16k, forward + train
    python benchmarks/bench_isolation.py --mixers ponet,fnet --lengths 1k..2k --time-budget 0.5   # quick

Two whole sweeps run one after the other (``zoo profile`` then ``zoo profile --no-isolate``) differ
by more than isolation costs: on 2 cores a sweep's total swings +-10% between runs, because the
timing rule (IQR/median <= 5% or the time budget) sends a different set of borderline cells to the
full budget each time (4 such pairs here: +14.0%, +3.5%, +21.4%, +11.9%). Here every cell runs
under both executors back to back, in alternating order, so drift and load hit both alike, and the
overhead is the ratio of the summed wall times (the zygote's start-up counted on the fork side),
with a bootstrap interval over cells. The cost isolation adds for sure, whatever the noise,
is in the per-phase sums (``phase_s``): the fork, the child's first fake pass and first call.
Target: under 15%. Writes ``bench-out/bench_isolation.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.compare import save_results  # noqa: E402

TARGET = 0.15


def _plan(args):
    from profiler.cases import PRESETS, parse_lengths, parse_mixers, parse_modes, plan_cells
    from profiler.settings import default_memory_budget

    p = PRESETS["default"]
    choices = parse_mixers(args.mixers)
    cells = plan_cells(choices, parse_lengths(args.lengths or p["lengths"]), parse_modes(p["modes"]), scope="mixer",
                       batch=p["batch"], dim=p["dim"], heads=p["heads"], depth=None, dtype="fp32", device="cpu",
                       causal=False, model=None)
    return cells, default_memory_budget("cpu")


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default=None, help="comma list [default: all registered]")
    parser.add_argument("--lengths", default=None, help="[default: the default sweep's 1k..16k]")
    parser.add_argument("--time-budget", type=float, default=2.0, help="seconds of timed calls per cell (the default sweep's)")
    parser.add_argument("--threads", type=int, default=None, help="[default: torch's default, as zoo profile]")
    args = parser.parse_args(argv)
    if not args.time_budget > 0:
        return _usage_error(f"time budget: expected a positive number of seconds, got {args.time_budget!r}")
    if args.threads is not None and args.threads < 1:
        return _usage_error(f"threads: expected a positive integer, got {args.threads!r}")

    import torch

    from profiler.executors import InProcessExecutor, ZygoteExecutor
    from profiler.settings import DEFAULT_TIMEOUT
    from zoo.errors import ZooError

    try:
        cells, budget = _plan(args)
    except ZooError as exc:  # unknown mixer, malformed lengths: one line, as zoo profile says it
        return _usage_error(str(exc))
    threads = args.threads or torch.get_num_threads()
    opts = {"threads": threads, "time_budget_s": args.time_budget, "memory_budget_bytes": budget, "predict": True,
            "builder": None, "timeout_s": DEFAULT_TIMEOUT, "cpu_heap": "managed"}
    executors = {"fork": ZygoteExecutor(), "inline": InProcessExecutor()}
    rows = []
    start = time.perf_counter()
    try:
        for i, cell in enumerate(cells):
            order = ["fork", "inline"] if i % 2 == 0 else ["inline", "fork"]
            row = {"cell": cell.title, "T": cell.T, "mode": cell.mode}
            for name in order:
                t0 = time.perf_counter()
                result = executors[name].run(cell, dict(opts), DEFAULT_TIMEOUT)
                row[name] = {"wall_s": time.perf_counter() - t0, "status": result.get("status"),
                             "phase_s": result.get("phase_s"), "time_median_s": result.get("time_median_s")}
            rows.append(row)
            print(f"[{i + 1}/{len(cells)}] {cell.title}: fork {row['fork']['wall_s']:.2f} s, "
                  f"inline {row['inline']['wall_s']:.2f} s", flush=True)
    finally:
        for ex in executors.values():
            ex.close()
    total = {name: sum(r[name]["wall_s"] for r in rows) for name in executors}
    overhead = total["fork"] / total["inline"] - 1.0
    rng = random.Random(0)
    boots = []
    for _ in range(2000):
        pick = [rows[rng.randrange(len(rows))] for _ in rows]
        boots.append(sum(r["fork"]["wall_s"] for r in pick) / sum(r["inline"]["wall_s"] for r in pick) - 1.0)
    boots.sort()
    lo, hi = boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]
    phases: dict[str, dict[str, float]] = {}
    for name in executors:
        acc: dict[str, float] = {}
        for r in rows:
            for k, v in (r[name]["phase_s"] or {}).items():
                acc[k] = acc.get(k, 0.0) + v
        acc["outside the protocol"] = total[name] - sum(acc.values())
        phases[name] = acc
    bad = [r["cell"] for r in rows if r["fork"]["status"] != "ok" or r["inline"]["status"] != "ok"]

    print(f"\n{len(rows)} cells, {threads} threads, {time.perf_counter() - start:.0f} s in all")
    print(f"fork-per-cell {total['fork']:.1f} s, in-process {total['inline']:.1f} s: isolation adds {overhead:+.1%} "
          f"(95% bootstrap over cells {lo:+.1%} .. {hi:+.1%}); target < {TARGET:.0%}: "
          f"{'PASS' if overhead < TARGET else 'FAIL'}")
    print(f"{'phase':22s} {'fork s':>9s} {'inline s':>9s} {'difference':>11s}")
    for k in phases["fork"]:
        f, n = phases["fork"][k], phases["inline"].get(k, 0.0)
        print(f"{k:22s} {f:9.1f} {n:9.1f} {f - n:+11.1f}")
    if bad:
        print(f"cells not ok under both executors: {', '.join(bad)}")
    path = save_results([{"cells": rows, "total_s": total, "overhead": overhead, "interval": [lo, hi],
                          "phases_s": phases, "threads": threads, "target": TARGET}], "bench_isolation")
    print(f"wrote {path}")
    return 0 if overhead < TARGET and not bad else 1


if __name__ == "__main__":
    sys.exit(main())

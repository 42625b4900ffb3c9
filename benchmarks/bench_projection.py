"""Issue 13's projection targets, on a quiet machine:

1. ``zoo project`` for every mixer x 1k..1M (forward and train, bf16, H100) in under a minute;
2. projected peak memory within 10% of measured for every mixer at 4k..16k on CPU, mixer and
   model scope;
3. projected time ratios to softmax within 2x of measured on CPU (a roofline is coarse: the
   table says which mixers miss and by how much).

    python benchmarks/bench_projection.py [--out runs/projection-bench] [--measured-mixer F --measured-model F]

Without ``--measured-*`` files it measures them first (``zoo profile --lengths 4k..16k --threads 1
--time-budget 0.5 --interleave``: measured ratios between mixers on a drifting VM, every mixer, mixer then model scope: tens of minutes). The CPU is calibrated again (``--recalibrate``) before
the time ratios. Prints PASS/FAIL per target, writes the calibration tables; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _measure(out: Path, scope: str, time_budget: float) -> Path:
    from profiler import run_profile

    return run_profile(lengths="4k..16k", scope=scope, threads=1, device="cpu", out=out, overwrite=True, progress=True,
                       time_budget=time_budget, interleave=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/projection-bench")
    p.add_argument("--measured-mixer", default=None)
    p.add_argument("--measured-model", default=None)
    p.add_argument("--time-budget", type=float, default=0.5, help="seconds of timed calls per measured cell [default: 0.5]")
    args = p.parse_args(argv)
    if not args.time_budget > 0:
        print(f"error: time budget: expected a positive number of seconds, got {args.time_budget!r}", file=sys.stderr)
        return 2
    from profiler.project_run import run_project
    from reports.projection import MEMORY_TOLERANCE, RATIO_TOLERANCE, calibration_markdown, calibration_rows
    from zoo.errors import ZooError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    misses: list[str] = []

    def check(name: str, ok: bool, seen: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {seen}")
        if not ok:
            misses.append(name)

    try:
        t0 = time.perf_counter()
        res = run_project(lengths="1k..1m", modes="both", device="h100", dtype="bf16", out=out / "h100.jsonl",
                          overwrite=True)
        wall = time.perf_counter() - t0
        check("zoo project, every mixer x 1k..1M, under a minute", wall < 60,
              f"{wall:.1f} s for {len(res['records'])} cells")
        for scope, given in (("mixer", args.measured_mixer), ("model", args.measured_model)):
            measured = Path(given) if given else _measure(out / f"measured_{scope}.jsonl", scope, args.time_budget)
            res = run_project(against=str(measured), device="cpu", recalibrate=scope == "mixer",
                              out=out / f"calibration_{scope}.jsonl", overwrite=True)
            from profiler.records import read_records

            rows = calibration_rows(res["records"], list(read_records(measured)))
            (out / f"calibration_{scope}.md").write_text(calibration_markdown(rows))
            mem = [r for r in rows if 4096 <= r["T"] <= 16384 and r["mem_error"] is not None]
            worst = max(mem, key=lambda r: abs(r["mem_error"]), default=None)
            check(f"{scope} scope: projected peak within 10% at 4k..16k",
                  bool(mem) and all(abs(r["mem_error"]) <= MEMORY_TOLERANCE for r in mem),
                  f"{len(mem)} cells, worst {worst['label']} {worst['mode']} T={worst['T']} {100 * worst['mem_error']:+.1f}%"
                  if worst else "no cells")
            ratios = [r for r in rows if r["ratio_factor"] is not None and r["label"] != "softmax"]
            bad = sorted({r["label"] for r in ratios if r["ratio_factor"] > RATIO_TOLERANCE})
            check(f"{scope} scope: projected time ratio to softmax within 2x", bool(ratios) and not bad,
                  f"{len(ratios)} cells; mixers outside: {', '.join(bad) or 'none'} (see {out}/calibration_{scope}.md)")
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())

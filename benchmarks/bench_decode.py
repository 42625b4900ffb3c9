"""Generation targets (issue 16): time per new token and state bytes against the context length.

Runs ``zoo profile --mode decode`` on the profiler's core (:func:`profiler.settings.plan_profile`
and :func:`profiler.sweep.run_sweep`: fork-per-cell, warm-up, adaptive repetitions, the managed
heap; ``--interleave`` by default: after every cell is measured, the cells are timed again in turn
in one process and the host's drift is taken out, since whole processes on a shared VM run up to 2x
slow; ``--no-interleave --rounds 3`` times each cell in three processes instead) for every mixer
that declares a generation state, at T = 1k..64k (D = 256, 4 heads, B = 1, fp32) by default, and checks the issue's targets from the records:

* every constant-state mixer (``spec.state`` O(1)) and every O(w) one: ms/token at the longest
  context within 1.2x of the shortest; decode exponent (``reports.generation.decode_exponent``:
  log-log slope over the longer half of the contexts) <= 0.1; state bytes equal at every T;
* softmax (KV cache, SDPA on the cache): decode exponent in [0.9, 1.1];

prints PASS/FAIL per target and exits 1 when one is missed (2 on bad input).

    python benchmarks/bench_decode.py                                   # full run (the lead's machine)
    python benchmarks/bench_decode.py --lengths 256..1k --mixers softmax,transnormer --time-budget 0.2  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TIME_RATIO = 1.2  # ms/token at the longest context / at the shortest, constant-state mixers
FLAT_EXPONENT = 0.1
SOFTMAX_EXPONENT = (0.9, 1.1)


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _stateful_mixers() -> str:
    from zoo import get_spec, list_mixers

    return ",".join(n for n in list_mixers() if get_spec(n).causal and get_spec(n).state is not None)


def targets_from_records(records: list[dict]) -> list[tuple[str, float | None, float, float]]:
    """(what, value, low, high) per target from a decode sweep's cell records."""
    from reports.generation import decode_exponent

    cells = [r for r in records if r.get("kind") == "cell" and r.get("mode") == "decode"]
    out = []
    for label in dict.fromkeys(r["label"] for r in cells):
        rows = sorted((r for r in cells if r["label"] == label), key=lambda r: r["T"])
        state_class = next((r.get("state_class") for r in rows if r.get("state_class")), None)
        if rows[0].get("status") == "unsupported" or state_class is None:
            continue
        ok = [r for r in rows if r["status"] == "ok"]
        missing = len(ok) < len(rows) or len(ok) < 2
        lengths = [r["T"] for r in ok]
        times = [r["time_median_s"] for r in ok]
        fit = None if missing else decode_exponent(lengths, times, [r.get("time_samples") for r in ok])
        k = None if fit is None else fit[0]
        if label == "softmax":
            out.append((f"{label} [{state_class}] decode exponent", k, *SOFTMAX_EXPONENT))
        elif state_class in ("O(1)", "O(w)"):
            ratio = None if missing else times[-1] / times[0]
            sizes = [r["state_bytes"] for r in ok]
            spread = None if missing else max(sizes) / min(sizes)
            out.append((f"{label} [{state_class}] ms/token T={lengths[-1] if ok else '?'} / T={lengths[0] if ok else '?'}",
                        ratio, 0.0, TIME_RATIO))
            out.append((f"{label} [{state_class}] decode exponent", k, -FLAT_EXPONENT, FLAT_EXPONENT))
            out.append((f"{label} [{state_class}] state bytes max/min over T", spread, 1.0, 1.0))
    return out


def check_range_targets(targets: list[tuple[str, float | None, float, float]]) -> int:
    """PASS/FAIL per (what, value, low, high); 1 when any is missed or was not measured."""
    missed = 0
    for what, value, lo, hi in targets:
        ok = value is not None and lo - 1e-12 <= value <= hi + 1e-12
        missed += not ok
        shown = "not measured" if value is None else f"{value:.3f}"
        print(f"{'PASS' if ok else 'FAIL'} {what}: {shown} (target {lo:g}..{hi:g})")
    print(f"{len(targets) - missed}/{len(targets)} targets met")
    return 1 if missed or not targets else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default=None, help="comma list [default: every mixer with a generation state]")
    parser.add_argument("--lengths", default="1k..64k", help="context lengths [default: 1k..64k]")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-budget", type=float, default=1.0, help="seconds of timed steps per cell and round")
    parser.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                        help="zoo profile --interleave: the cells timed again in turn in one process, the host's drift "
                             "taken out [default: on]")
    parser.add_argument("--rounds", type=int, default=None,
                        help="zoo profile --rounds (with --no-interleave): each cell in this many processes, the fastest "
                             "clean round kept [default: 3]")
    parser.add_argument("--threads", type=int, default=None, help="[default: torch's default, as zoo profile]")
    parser.add_argument("--out", default="bench-out/bench_decode.jsonl")
    args = parser.parse_args(argv)
    if not args.time_budget > 0:
        return _usage_error(f"time budget: expected a positive number of seconds, got {args.time_budget!r}")
    if args.threads is not None and args.threads < 1:
        return _usage_error(f"threads: expected a positive integer, got {args.threads!r}")
    if args.rounds is not None and args.rounds < 1:
        return _usage_error(f"rounds: expected a positive integer, got {args.rounds!r}")
    if args.interleave and args.rounds not in (None, 1):
        return _usage_error(f"rounds: expected 1 with --interleave (use --no-interleave for rounds), got {args.rounds}")
    rounds = args.rounds or (1 if args.interleave else 3)

    from profiler.settings import plan_profile
    from profiler.sweep import run_sweep
    from zoo.errors import ZooError

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        cells, settings = plan_profile(mixers=args.mixers or _stateful_mixers(), lengths=args.lengths, modes="decode",
                                       dim=args.dim, heads=args.heads, device=args.device, out=args.out,
                                       overwrite=True, time_budget=args.time_budget, threads=args.threads,
                                       rounds=rounds, interleave=args.interleave, progress=True)
    except ZooError as exc:  # unknown mixer, malformed lengths: one line, as zoo profile says it
        return _usage_error(str(exc))
    path = run_sweep(cells, settings)
    records = [json.loads(line) for line in open(path)]
    print(f"\nrecords in {path}")
    return check_range_targets(targets_from_records(records))


if __name__ == "__main__":
    sys.exit(main())

"""Issue 13's Ray targets: a sweep on a 2-worker local Ray cluster has exactly the cell set of a
``fork`` sweep (same keys, same statuses), killing a Ray worker process mid-sweep loses no cell and
duplicates none, and Ray's overhead per cell.

    python benchmarks/bench_scaleout.py [--mixers all] [--lengths 64..256] [--out runs/scaleout]

Runs three sweeps of the same plan (CPU, one thread per cell): ``fork``; ``ray`` on a local
cluster of ``--ray-cpus`` (2) CPUs; ``ray`` again while a watcher SIGKILLs the first Ray worker it
sees executing a cell (its process title is ``ray::run_cell_here``). Prints PASS/FAIL per target
and the overhead (median ``executor_overhead_s``; wall per cell against fork); exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _worker_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if fh.read().startswith(b"ray::run_cell_here"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _kill_one(stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set() and not killed:
        for pid in _worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            except ProcessLookupError:
                continue
        time.sleep(0.05)


def _sweep(out: Path, args, executor: str, **extra):
    from profiler import run_profile
    from profiler.records import read_records

    t0 = time.perf_counter()
    run_profile(mixers=args.mixers, lengths=args.lengths, device="cpu", threads=1, time_budget=args.time_budget,
                out=out, overwrite=True, progress=False, executor=executor, **extra)
    wall = time.perf_counter() - t0
    cells = [r for r in read_records(out) if r["kind"] == "cell"]
    return cells, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixers", default="all")
    p.add_argument("--lengths", default="64..256")
    p.add_argument("--time-budget", type=float, default=0.05)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--out", default="runs/scaleout")
    args = p.parse_args(argv)
    if args.ray_cpus < 1 or args.time_budget <= 0:
        p.error("--ray-cpus: expected a positive integer; --time-budget: a positive number of seconds")
    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: ray is not installed; pip install -e '.[ray]'", file=sys.stderr)
        return 2
    from zoo.errors import ZooError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ray_opts = {"executor_options": {"ray_cpus": args.ray_cpus}}
    try:
        fork, fork_wall = _sweep(out / "fork.jsonl", args, "fork")
        rayc, ray_wall = _sweep(out / "ray.jsonl", args, "ray", **ray_opts)
        stop, killed = threading.Event(), []
        watcher = threading.Thread(target=_kill_one, args=(stop, killed), daemon=True)
        watcher.start()
        kill, _ = _sweep(out / "ray_kill.jsonl", args, "ray", **ray_opts)
        stop.set()
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = lambda cells: {c["key"]: c["status"] for c in cells}  # noqa: E731
    misses = []

    def check(name: str, ok: bool, seen: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {seen}")
        if not ok:
            misses.append(name)

    diff = {k for k in status(fork).keys() | status(rayc).keys() if status(fork).get(k) != status(rayc).get(k)}
    check("ray cell set equals fork's", not diff and len(rayc) == len(fork),
          f"{len(fork)} fork cells, {len(rayc)} ray cells, {len(diff)} keys differ in presence or status")
    keys = [c["key"] for c in kill]
    check("a killed worker loses and duplicates no cell", bool(killed) and sorted(keys) == sorted(status(fork))
          and len(keys) == len(set(keys)),
          f"killed pid {killed or 'none (no worker seen)'}; {len(kill)} records, {len(set(keys))} distinct keys; "
          f"statuses differing from fork: {sum(status(kill).get(k) != v for k, v in status(fork).items())}")
    over = [c["executor_overhead_s"] for c in rayc if c.get("executor_overhead_s") is not None]
    if over:
        print(f"ray overhead per cell: median {statistics.median(over):.3f} s, max {max(over):.3f} s "
              f"(round trip minus the cell's time on the worker); wall per cell: fork {fork_wall / len(fork):.2f} s, "
              f"ray with {args.ray_cpus} workers {ray_wall / len(rayc):.2f} s")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())

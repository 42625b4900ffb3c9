"""Timings a researcher can trust on a busy machine (issue 10): a fixed sweep, loaded vs quiet.

    python benchmarks/bench_contention.py                      # spin and matmul loads, one round each (~8 min on 2 cores)
    python benchmarks/bench_contention.py --settings spin --rounds 2
    python benchmarks/bench_contention.py --settings none --threads 1   # A/A: two quiet sweeps, the VM's own noise
    python benchmarks/bench_contention.py --under-load spin -- bash scripts/main.sh   # any command under the load

For each load setting and round, two ``zoo profile`` sweeps run back to back (a subprocess each,
the CLI as a user runs it, records in ``bench-out/contention/``):

1. *loaded*: a load generator started by this script takes ``--load-procs`` cores (one busy
   process per core: ``spin``, a pure-Python loop, or ``matmul``, a one-thread BLAS matmul loop
   that also takes caches and memory bandwidth), and the sweep runs with ``--threads auto``
   (or the ``--threads`` given); the load is stopped right after;
2. *quiet*: the same sweep at the thread count the loaded run recorded, so the comparison is
   like with like (the thread count changes the comparison itself).

Setting ``none`` starts no load: its "loaded" sweep is a second quiet one (an A/A test), the floor
the other settings can be judged against on a machine whose own noise is large. Both sweeps use
``zoo profile --interleave`` as ``scripts/main.sh`` does (every cell measured in its own process,
then all timed again in turn in one process, the host's drift taken out: ``profiler/interleave.py``);
``--no-interleave`` uses ``--rounds`` (``--profile-rounds``, default 3) instead.

Statistics (``benchmarks/contention_stats.py``), loaded against quiet, with their targets: the
share of cells whose ratio to the baseline is within 15% of the quiet one (>= 90%) and the cells
outside 15% not flagged (noisy, contended or beside busy neighbours: not clean) (0); the largest difference of fitted time exponents
(<= 0.1); Kendall's tau of the mixers' ranking per (mode, T), mean over groups (>= 0.9); the
quiet run's flagged share (<= 10%). Exit 1 when a target is missed, 2 on bad input.
Writes ``bench-out/bench_contention.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import contention_stats as stats  # noqa: E402
from profiler.compare import save_results  # noqa: E402
from profiler.contention import auto_threads, usable_cores  # noqa: E402

DEFAULT_MIXERS = "softmax,ponet,fnet,longformer,skeinformer,transnormer"
SETTINGS = ("spin", "matmul")  # the load generator's kinds
SWEEP_SETTINGS = SETTINGS + ("none",)  # none: no load (A/A)
PROFILE_ROUNDS = "3"  # zoo profile --rounds, with --no-interleave
SETTLE_S = 2.0  # after starting or stopping the load, before a sweep starts

# One busy process of the load generator. It dies with this script: PR_SET_PDEATHSIG where the C
# library has prctl, and a check of its parent id in the loop everywhere (no orphans after a kill).
_WORKER = r"""
import os, sys, signal
parent, kind = int(sys.argv[1]), sys.argv[2]
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    sys.exit(0)
if kind == "spin":
    step = lambda: sum(range(20000))
else:
    try:
        import numpy as np
        a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    except ImportError:
        import torch
        torch.set_num_threads(1)
        a = torch.rand(1024, 1024)
    step = lambda: a @ a
print("ready", flush=True)
while os.getppid() == parent:
    step()
"""


class LoadGenerator:
    """``procs`` busy processes of one ``kind`` (``spin`` or ``matmul``), one core each.

    ``start()`` returns once every worker runs; ``stop()`` terminates, waits, and kills what is
    left. A context manager; stopping twice is harmless.
    """

    def __init__(self, kind: str, procs: int = 1) -> None:
        if kind not in SETTINGS:
            raise ValueError(f"load: expected one of {', '.join(SETTINGS)}, got {kind!r}")
        if isinstance(procs, bool) or not isinstance(procs, int) or procs < 1:
            raise ValueError(f"load procs: expected a positive integer, got {procs!r}")
        self.kind, self.procs = kind, procs
        self.workers: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def start(self, timeout: float = 60.0) -> "LoadGenerator":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            for _ in range(self.procs):
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-c", _WORKER, str(os.getpid()), self.kind], stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL, env=env, text=True))
            deadline = time.monotonic() + timeout
            for w in self.workers:
                if w.stdout.readline().strip() != "ready" or time.monotonic() > deadline:
                    raise RuntimeError(f"load worker {w.pid} did not start ({self.kind})")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.terminate()
        for w in self.workers:
            try:
                w.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
            if w.stdout is not None:
                w.stdout.close()
        self.workers = []

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        raise UsageError(message)


class UsageError(Exception):
    pass


def _parse(argv: list[str]) -> argparse.Namespace:
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixers", default=DEFAULT_MIXERS, help=f"comma list [default: {DEFAULT_MIXERS}]")
    p.add_argument("--lengths", default="512..4k", help="[default: 512..4k]")
    p.add_argument("--mode", default="both", help="forward | train | both [default: both]")
    p.add_argument("--baseline", default="softmax", help="label the ratios refer to [default: softmax]")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma list of spin, matmul [default: both]")
    p.add_argument("--load-procs", default="1", help="busy processes (cores taken) [default: 1]")
    p.add_argument("--rounds", default="1", help="loaded/quiet pairs per setting [default: 1]")
    p.add_argument("--profile-rounds", default=PROFILE_ROUNDS,
                   help=f"zoo profile --rounds of every sweep, with --no-interleave [default: {PROFILE_ROUNDS}]")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                   help="zoo profile --interleave (every cell timed again in turn with the others in one process; "
                        "--profile-rounds is then 1) [default: on]")
    p.add_argument("--threads", default="auto", help="threads of the loaded sweep: auto or a count [default: auto]")
    p.add_argument("--time-budget", default="0.5", help="seconds of timed calls per cell [default: 0.5, main.sh's]")
    p.add_argument("--under-load", default=None, help="run the command after -- under this load (spin or matmul) and exit")
    args = p.parse_args(argv)
    args.command = command
    return args


def _positive(name: str, text: str, kind=int):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise UsageError(f"{name}: expected a positive {'integer' if kind is int else 'number'}, got {text!r}")
    return value


def _check(args: argparse.Namespace) -> None:
    """Every bad input is found here, before any load starts."""
    args.rounds = _positive("rounds", args.rounds)
    args.profile_rounds = _positive("profile rounds", args.profile_rounds)
    args.load_procs = _positive("load procs", args.load_procs)
    args.time_budget = _positive("time budget", args.time_budget, float)
    cores = usable_cores()[0]
    if cores < 2:
        raise UsageError(f"cores: expected at least 2 usable cores (the load takes one, the sweep another), got {cores}")
    if args.load_procs >= cores:
        raise UsageError(f"load procs: expected 1..{cores - 1} (cores taken of {cores}; one must stay free), "
                         f"got {args.load_procs}")
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        raise UsageError(f"threads: expected auto or a positive integer, got {args.threads!r}")
    if args.under_load is not None:
        if args.under_load not in SETTINGS:
            raise UsageError(f"under load: expected one of {', '.join(SETTINGS)}, got {args.under_load!r}")
        if not args.command:
            raise UsageError("under load: expected a command after --, e.g. -- bash scripts/main.sh")
        return
    if args.command:
        raise UsageError(f"unexpected command after --: {' '.join(args.command)!r} (only with --under-load)")
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in args.settings if s not in SWEEP_SETTINGS] or ([] if args.settings else ["(empty)"])
    if bad:
        raise UsageError(f"settings: expected a comma list of {', '.join(SWEEP_SETTINGS)}, got {bad[0]!r}")
    try:  # the profiler's own parsers: the same one-line errors zoo profile gives
        from profiler.cases import parse_lengths, parse_mixers, parse_modes
        from zoo.errors import ZooError
    except ImportError:
        return  # moved by a refactor: zoo profile itself answers bad mixers/lengths
    try:
        labels = [c.label for c in parse_mixers(args.mixers)]
        parse_lengths(args.lengths)
        parse_modes(args.mode)
    except ZooError as exc:
        raise UsageError(str(exc)) from None
    if args.baseline not in labels:
        raise UsageError(f"baseline: expected one of the mixers ({', '.join(labels)}), got {args.baseline!r}")


class RunFailed(Exception):
    pass


def _profile(args: argparse.Namespace, out: Path, threads: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "cli.py"), "profile", "--device", "cpu", "--mixers", args.mixers,
           "--lengths", args.lengths, "--mode", args.mode, "--time-budget", str(args.time_budget),
           *(["--interleave"] if args.interleave else ["--rounds", str(args.profile_rounds)]),
           "--threads", threads, "--baseline", args.baseline, "--out", str(out), "--overwrite", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if line.startswith("warning"):
            print(f"    zoo profile: {line}", flush=True)
    return proc


def _require(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode == 0:
        return
    last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "no output")
    if proc.returncode == 2:
        raise UsageError(last.removeprefix("error: "))
    raise RunFailed(f"the {what} sweep failed (exit {proc.returncode}): {last}")


def run_pair(args: argparse.Namespace, setting: str, round_no: int) -> dict:
    """One loaded sweep under ``setting``, then one quiet sweep at its recorded thread count."""
    folder = ROOT / "bench-out" / "contention"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{setting}-{round_no}-{k}.jsonl" for k in ("loaded", "quiet")}
    wall = {}
    with LoadGenerator(setting, args.load_procs) if setting != "none" else contextlib.nullcontext():
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        proc = _profile(args, paths["loaded"], args.threads)
        if proc.returncode == 2 and args.threads == "auto" and "threads" in proc.stderr:
            n = auto_threads("auto")  # this zoo profile predates --threads auto: resolved here, same rule
            print(f"    note: zoo profile does not take --threads auto; resolved here to {n}", flush=True)
            proc = _profile(args, paths["loaded"], str(n))
        wall["loaded"] = time.perf_counter() - t0
    _require(proc, "loaded")
    loaded = stats.load_cells(paths["loaded"])
    try:
        threads = stats.thread_count(loaded)
    except ValueError as exc:
        raise RunFailed(f"loaded sweep {paths['loaded']}: {exc}") from None
    time.sleep(SETTLE_S)
    t0 = time.perf_counter()
    proc = _profile(args, paths["quiet"], str(threads))
    wall["quiet"] = time.perf_counter() - t0
    _require(proc, "quiet")
    quiet = stats.load_cells(paths["quiet"])
    result = stats.evaluate(loaded, quiet, args.baseline)
    result.update(setting=setting, round=round_no, threads=threads, wall_s=wall,
                  files={k: str(v) for k, v in paths.items()})
    return result


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.1%}"


def print_pair(r: dict, baseline: str, load_procs: int) -> None:
    t = r["targets"]
    mark = {name: "PASS" if ok else "FAIL" for name, (_, _, ok) in t.items()}
    ra, ex, rk, qf = r["ratios"], r["exponents"], r["rankings"], r["quiet_flags"]
    what = "no load (A/A: two quiet sweeps)" if r["setting"] == "none" else \
        f"{r['setting']} load ({load_procs} busy process{'es' if load_procs > 1 else ''})"
    print(f"\n{what}, round {r['round']}, "
          f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}: loaded sweep {r['wall_s']['loaded']:.0f} s, "
          f"quiet sweep {r['wall_s']['quiet']:.0f} s")
    print(f"  ratio to {baseline} within 15% of quiet   {ra['within']}/{ra['n']} cells ({_pct(ra['share_within'])})"
          f"   target >= 90%   {mark['share_within']}")
    print(f"  outside 15% and not flagged            {ra['unflagged_outliers']}"
          f"   target 0   {mark['unflagged_outliers']}"
          + (f"   ({', '.join(f'{a} {m} T={T}' for a, m, T in ra['outlier_cells'])})" if ra["outlier_cells"] else ""))
    on_all = sum(not row["clean"] for row in ex["rows"])
    print(f"  time exponents, max |loaded - quiet|   {ex['max_exponent_diff']:.3f} ({len(ex['rows'])} series fitted, "
          f"{on_all} on every length for < 3 clean ones, {len(ex['skipped'])} unfitted)   target <= 0.1   "
          f"{mark['max_exponent_diff']}")
    print(f"  ranking per (mode, T), Kendall tau     mean {rk['kendall_tau_mean']:.3f}, min {rk['kendall_tau_min']:.3f} "
          f"({len(rk['rows'])} groups)   target mean >= 0.9   {mark['kendall_tau_mean']}")
    print(f"  quiet run flagged (not clean)          {qf['flagged']}/{qf['n']} ({_pct(qf['share'])}; "
          f"{qf['noisy']} noisy, {qf['contended']} contended, {qf['neighbours']} neighbours)   target <= 10%   "
          f"{mark['quiet_flagged_share']}")
    for name in ("loaded", "quiet"):
        c = r["contention"][name]
        if not c["probed"]:
            print(f"  {name} run: no contention fields in the records (probe not wired into zoo profile)")
            continue
        other = "n/a" if c["other_cpu_mean"] is None else f"{c['other_cpu_mean']:.2f}"
        beside = "n/a" if c.get("neighbour_cpu_mean") is None else f"{c['neighbour_cpu_mean']:.2f}"
        print(f"  {name} run: {c['contended_cells']} contended cells, {c['contended_samples']} contended samples "
              f"discarded ({c['samples']} kept), others' CPU {other} cores on average; "
              f"{c.get('neighbour_cells', 0)} cells beside busy neighbours (others on the free cores: {beside})")
    worst = sorted(ra["rows"], key=lambda row: -abs(row["off"]))[:5]
    if worst:
        print("  largest ratio differences: " + ", ".join(
            f"{a} {m} T={T} {row['off']:+.0%}{' (flagged)' if row['flagged'] else ''}"
            for row in worst for (a, m, T) in [row["cell"]]))


def under_load(kind: str, procs: int, command: list[str]) -> int:
    with LoadGenerator(kind, procs):
        print(f"{kind} load: {procs} busy process(es) running; {' '.join(command)}", file=sys.stderr, flush=True)
        time.sleep(SETTLE_S)
        return subprocess.call(command, cwd=ROOT)


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C: the load generator stops
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
        _check(args)
        if args.under_load is not None:
            return under_load(args.under_load, args.load_procs, args.command)
        results = []
        start = time.perf_counter()
        for round_no in range(1, args.rounds + 1):
            for setting in args.settings:
                print(f"[{setting}, round {round_no}] loaded sweep, then quiet sweep ...", flush=True)
                results.append(run_pair(args, setting, round_no))
                print_pair(results[-1], args.baseline, args.load_procs)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    passed = all(r["passed"] for r in results)
    path = save_results([{k: v for k, v in r.items()} for r in results], "bench_contention")
    print(f"\n{len(results)} loaded/quiet pairs in {time.perf_counter() - start:.0f} s: "
          f"{'all targets met' if passed else 'a target was missed'}; wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

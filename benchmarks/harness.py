"""Side-by-side benchmark harness: interleaved timing in one process, peak memory per case in a
fresh subprocess. Used by the ``benchmarks/bench_*.py`` scripts that check the issues' speed and
memory targets against peers (the paper's own code, transformers) in the same run.

A case is built by a *builder*: a module-level function in a benchmark script,
``build(mode: str, **kwargs) -> Callable[[], object]``, that constructs the module and inputs
(outside any timed region) and returns a zero-argument closure running ONE forward
(``mode="forward"``, under ``torch.no_grad()``) or ONE forward + backward (``mode="train"``).
Builders are referenced as ``"path/to/script.py:function"`` so the memory subprocess can
re-create them without pickling.

    from benchmarks.harness import Case, compare, fit_exponent, print_results, save_results

    cases = [Case("zoo ponet", "benchmarks/bench_foundation.py:build_zoo_ponet", {"T": 16384}),
             Case("paper ponet", "benchmarks/bench_foundation.py:build_ref_ponet", {"T": 16384, "repo": path})]
    results = compare(cases, modes=("forward", "train"), reps=7)
    print_results(results, baseline="paper ponet")

Timing: every case is built first, warmed up (>= 2 calls and >= 0.2 s), then the cases are
called round-robin (A B C A B C ...) so machine load drifts hit all of them alike; each case's
median and IQR over its samples are reported. Ratios are medians of per-round ratios.

Memory: for each (case, mode) a fresh ``python`` process builds the case, runs it once to warm
up, resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and reports
``VmHWM - VmRSS(before the measured call)``: the peak resident growth of one call (Linux only;
elsewhere ``ru_maxrss`` of the whole process, marked as such).

The CPU heap (``profiler/heap.py``), the same policy as ``zoo profile``: the memory subprocess
runs in the *tracking* heap (every block above 1 MiB its own mapping, returned on free, so the
VmHWM growth is the live peak); timing runs in the *caching* heap (no mmap, no trim: after the
warm-up no call page-faults). Under glibc's default dynamic threshold a tensor that crosses
32 MiB between two lengths turns heap reuse into per-call page faults, a step in the time curve
that is the allocator's (bigbird's exponent read ~1.25, performer's 4k->8k step 2.8x). Set
``ZOO_BENCH_HEAP=system`` to time under glibc as it is; each result row records the heaps used.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from profiler.heap import HEAP_MODES, release_heap, set_heap_mode  # noqa: E402 (torch-free)


@dataclasses.dataclass
class Case:
    name: str
    builder: str  # "relative/or/absolute/script.py:function"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_builder(ref: str) -> Callable[..., Callable[[], object]]:
    path, _, func = ref.rpartition(":")
    file = Path(path)
    if not file.is_absolute():
        file = ROOT / file
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(f"_bench_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return getattr(module, func)


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return torch.get_num_threads()


def _warm(fn: Callable[[], object], min_calls: int = 2, min_seconds: float = 0.2) -> None:
    start, calls = time.perf_counter(), 0
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1


def time_interleaved(
    fns: dict[str, Callable[[], object]], reps: int = 7, max_seconds: float = 240.0
) -> dict[str, list[float]]:
    """Round-robin timing; stops early (>= 3 rounds) when the time budget is spent."""
    for fn in fns.values():
        _warm(fn)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > max_seconds:
            break
    return samples


def _read_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure_memory_here(fn: Callable[[], object]) -> tuple[int, str]:
    """Peak resident growth of one call of fn (call this in a fresh process)."""
    import gc

    fn()  # warm-up: lazy inits, allocator pools
    gc.collect()
    release_heap()
    try:
        before = _read_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        fn()
        return max(0, _read_status("VmHWM") - before), "vmhwm"
    except (OSError, KeyError):
        import resource

        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"


def peak_memory(case: Case, mode: str, threads: int | None = None, timeout: float = 900) -> dict[str, Any]:
    """Run the case once in a fresh interpreter and return {"bytes", "method"} or {"error"}."""
    payload = json.dumps({"builder": case.builder, "kwargs": case.kwargs, "mode": mode, "threads": threads})
    proc = subprocess.run(
        [sys.executable, __file__, "--memory", payload],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def compare(
    cases: list[Case],
    modes: tuple[str, ...] = ("forward", "train"),
    reps: int = 7,
    memory: bool = True,
    threads: int | None = None,
    max_seconds: float = 240.0,
    heap: str | None = None,
) -> list[dict[str, Any]]:
    """Time all cases side by side per mode, then measure each one's peak memory in a subprocess.

    ``heap``: the CPU heap of the timed calls (default ``$ZOO_BENCH_HEAP`` or ``caching``)."""
    heap = heap or os.environ.get("ZOO_BENCH_HEAP", "caching")
    if heap not in HEAP_MODES:
        print(f"error: heap (ZOO_BENCH_HEAP): expected one of {', '.join(HEAP_MODES)}, got {heap!r}", file=sys.stderr)
        raise SystemExit(2)
    threads_used = set_threads(threads)
    results = []
    for mode in modes:
        fns = {c.name: load_builder(c.builder)(mode, **c.kwargs) for c in cases}
        timing_heap = set_heap_mode(heap)  # the warm-up calls fault the caching heap in
        try:
            samples = time_interleaved(fns, reps=reps, max_seconds=max_seconds)
        finally:
            del fns
            set_heap_mode("tracking")
            release_heap()
        rounds = min(len(s) for s in samples.values())
        for case in cases:
            s = samples[case.name]
            q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
            row = {
                "case": case.name,
                "mode": mode,
                "kwargs": case.kwargs,
                "threads": threads_used,
                "time_median_s": statistics.median(s),
                "time_iqr_s": q[2] - q[0],
                "time_samples": s,
                "rounds": rounds,
                "heap": {"timing": timing_heap, "memory": "tracking" if memory else None},
            }
            if memory:
                mem = peak_memory(case, mode, threads)
                row["mem_peak_bytes"] = mem.get("bytes")
                row["mem_method"] = mem.get("method")
                row["mem_error"] = mem.get("error")
            results.append(row)
    return results


def ratio(results: list[dict[str, Any]], a: str, b: str, mode: str, metric: str = "time") -> float | None:
    """a / b for a metric: median of per-round time ratios, or the memory ratio."""
    ra = next((r for r in results if r["case"] == a and r["mode"] == mode), None)
    rb = next((r for r in results if r["case"] == b and r["mode"] == mode), None)
    if ra is None or rb is None:
        return None
    if metric == "time":
        pairs = [x / y for x, y in zip(ra["time_samples"], rb["time_samples"])]
        return statistics.median(pairs)
    x, y = ra.get("mem_peak_bytes"), rb.get("mem_peak_bytes")
    return None if not x or not y else x / y


def fit_exponent(lengths: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) vs log(length)."""
    xs = [math.log(t) for t in lengths]
    ys = [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _fmt_bytes(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:,.0f} MiB"


def print_results(results: list[dict[str, Any]], baseline: str | None = None) -> None:
    print(f"{'case':34s} {'mode':8s} {'median':>10s} {'IQR':>9s} {'peak mem':>11s} {'time ratio':>10s} {'mem ratio':>9s}")
    for r in results:
        tr = mr = ""
        if baseline and r["case"] != baseline:
            t = ratio(results, r["case"], baseline, r["mode"], "time")
            m = ratio(results, r["case"], baseline, r["mode"], "memory")
            tr = f"{t:.3f}" if t else "-"
            mr = f"{m:.3f}" if m else "-"
        mem = _fmt_bytes(r.get("mem_peak_bytes")) if not r.get("mem_error") else "error"
        print(
            f"{r['case']:34s} {r['mode']:8s} {r['time_median_s']:9.3f}s {r['time_iqr_s']:8.3f}s "
            f"{mem:>11s} {tr:>10s} {mr:>9s}"
        )
        if r.get("mem_error"):
            print(f"    memory error: {r['mem_error']}")


def save_results(results: list[dict[str, Any]], name: str) -> Path:
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    return path


def _memory_main(payload: str) -> None:
    spec = json.loads(payload)
    set_heap_mode("tracking")
    set_threads(spec.get("threads"))
    fn = load_builder(spec["builder"])(spec["mode"], **spec["kwargs"])
    nbytes, method = measure_memory_here(fn)
    print(json.dumps({"bytes": nbytes, "method": method}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        _memory_main(sys.argv[2])
    else:
        print(__doc__)

"""Side-by-side comparisons on the profiler's core: the benchmarks' room.

A *case* is a zero-argument callable built by a module-level function of a benchmark script,
``build(mode: str, **kwargs) -> Callable[[], object]`` (a zoo mixer or a peer from the paper's
code: just another callable), referenced as ``"path/to/script.py:function"`` so the memory
subprocess can re-create it. :func:`module_step` makes the callable from a module and an input.

* Timing: every case is built and warmed up (:func:`profiler.timing.warm_up`), then called
  round-robin (A B C A B C ...) so load drifts hit all alike, in the *caching* CPU heap
  (``ZOO_BENCH_HEAP=system`` keeps glibc as is); ratios are medians of per-round ratios.
* Memory: one fresh interpreter per (case, mode) runs :func:`profiler.memory.memory_pass_cpu`
  in the *tracking* heap after a warm-up call, as ``zoo profile`` does.
* Fits: :func:`reports.fit.fit_scaling`, the report's; targets: :func:`check_targets` prints
  PASS/FAIL per target and gives the exit code (1 when any target is missed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from profiler.heap import HEAP_MODES, release_heap, set_heap_mode

__all__ = ["Case", "compare", "ratio", "fit_exponent", "print_results", "save_results", "check_targets",
           "module_step", "random_input", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Case:
    name: str
    builder: str  # "relative/to/the/repo/script.py:function" or an absolute path
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def module_step(mode: str, module, call: Callable, x) -> Callable[[], object]:
    """One forward under no_grad (``mode="forward"``) or one forward + backward of a fixed random
    output gradient (``"train"``), of ``call(x)`` on ``module``'s parameters."""
    import torch

    if mode == "forward":
        module.eval()

        def run_forward():
            with torch.no_grad():
                return call(x)

        return run_forward
    if mode != "train":
        raise ValueError(f"mode: expected 'forward' or 'train', got {mode!r}")
    module.train()
    x = x.detach().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]
    grad_out = None

    def run_train():
        nonlocal grad_out
        y = call(x)
        if grad_out is None:
            grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        y.backward(grad_out)
        # gradients dropped at the end, not the start: nothing of this step outlives it, so a
        # memory pass's baseline after a warm-up call holds no step-sized leftovers
        for p in params:
            p.grad = None
        x.grad = None
        return y.detach()

    return run_train


def random_input(B: int, T: int, D: int):
    """(B, T, D) standard normal, seed 0."""
    import torch

    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))


def _load(ref: str) -> Callable[..., Callable[[], object]]:
    from profiler.builders import load_ref

    path, _, func = ref.rpartition(":")
    file = Path(path) if Path(path).is_absolute() else ROOT / path
    return load_ref(f"{file}:{func}")


def _set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return torch.get_num_threads()


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int = 7, max_seconds: float = 240.0) -> dict[str, list[float]]:
    """Round-robin timing, one call per sample; stops early (>= 3 rounds) once the budget is spent."""
    import time

    from profiler.timing import warm_up

    for fn in fns.values():
        fn()  # the first call: set-up, never a warm-up call
        warm_up(fn)
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


def peak_memory(case: Case, mode: str, threads: int | None = None, timeout: float = 900) -> dict[str, Any]:
    """The case's peak in a fresh interpreter: {"bytes", "method"} or {"error"}."""
    payload = json.dumps({"builder": case.builder, "kwargs": case.kwargs, "mode": mode, "threads": threads})
    env = dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    proc = subprocess.run([sys.executable, "-m", "profiler.compare", "--memory", payload], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def _row(case: Case, mode: str, s: list[float], threads: int, rounds: int, heap: dict) -> dict[str, Any]:
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {"case": case.name, "mode": mode, "kwargs": case.kwargs, "threads": threads,
            "time_median_s": statistics.median(s), "time_iqr_s": q[2] - q[0], "time_samples": s, "rounds": rounds,
            "heap": heap}


def compare(cases: list[Case], modes: tuple[str, ...] = ("forward", "train"), reps: int = 7, memory: bool = True,
            threads: int | None = None, max_seconds: float = 240.0, heap: str | None = None) -> list[dict[str, Any]]:
    """Time all cases side by side per mode, then measure each one's peak memory in a subprocess.
    ``heap``: the CPU heap of the timed calls (default ``$ZOO_BENCH_HEAP`` or ``caching``)."""
    heap = heap or os.environ.get("ZOO_BENCH_HEAP", "caching")
    if heap not in HEAP_MODES:
        print(f"error: heap (ZOO_BENCH_HEAP): expected one of {', '.join(HEAP_MODES)}, got {heap!r}", file=sys.stderr)
        raise SystemExit(2)
    used = _set_threads(threads)
    results = []
    for mode in modes:
        fns = {c.name: _load(c.builder)(mode, **c.kwargs) for c in cases}
        timing_heap = set_heap_mode(heap)  # the warm-up calls fault the caching heap in
        try:
            samples = time_interleaved(fns, reps=reps, max_seconds=max_seconds)
        finally:
            del fns
            set_heap_mode("tracking")
            release_heap()
        rounds = min(len(s) for s in samples.values())
        for case in cases:
            row = _row(case, mode, samples[case.name], used, rounds,
                       {"timing": timing_heap, "memory": "tracking" if memory else None})
            if memory:
                mem = peak_memory(case, mode, threads)
                row.update(mem_peak_bytes=mem.get("bytes"), mem_method=mem.get("method"), mem_error=mem.get("error"))
            results.append(row)
    return results


def ratio(results: list[dict[str, Any]], a: str, b: str, mode: str, metric: str = "time") -> float | None:
    """a / b for a metric: median of per-round time ratios, or the memory ratio."""
    ra = next((r for r in results if r["case"] == a and r["mode"] == mode), None)
    rb = next((r for r in results if r["case"] == b and r["mode"] == mode), None)
    if ra is None or rb is None:
        return None
    if metric == "time":
        return statistics.median(x / y for x, y in zip(ra["time_samples"], rb["time_samples"]))
    x, y = ra.get("mem_peak_bytes"), rb.get("mem_peak_bytes")
    return None if not x or not y else x / y


def fit_exponent(lengths: list[float], values: list[float]) -> float:
    """The scaling exponent by the report's fit (:func:`reports.fit.fit_scaling`)."""
    from reports.fit import fit_scaling

    fit = fit_scaling(lengths, values)
    if fit is None:
        raise ValueError(f"fit_exponent: expected two or more distinct positive points, got {list(zip(lengths, values))}")
    return fit.k


def print_results(results: list[dict[str, Any]], baseline: str | None = None) -> None:
    from reports.metrics import format_bytes

    print(f"{'case':34s} {'mode':8s} {'median':>10s} {'IQR':>9s} {'peak mem':>11s} {'time ratio':>10s} {'mem ratio':>9s}")
    for r in results:
        tr = mr = ""
        if baseline and r["case"] != baseline:
            t = ratio(results, r["case"], baseline, r["mode"], "time")
            m = ratio(results, r["case"], baseline, r["mode"], "memory")
            tr, mr = (f"{t:.3f}" if t else "-"), (f"{m:.3f}" if m else "-")
        mem = "error" if r.get("mem_error") else (format_bytes(r["mem_peak_bytes"]) if r.get("mem_peak_bytes") else "-")
        print(f"{r['case']:34s} {r['mode']:8s} {r['time_median_s']:9.3f}s {r['time_iqr_s']:8.3f}s "
              f"{mem:>11s} {tr:>10s} {mr:>9s}")
        if r.get("mem_error"):
            print(f"    memory error: {r['mem_error']}")


def save_results(results: Any, name: str) -> Path:
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    return path


def check_targets(targets: list[tuple[str, float | None, float]]) -> int:
    """(what, value, upper limit) per target: prints PASS/FAIL lines; returns 1 when any target is
    missed or could not be measured (value None), else 0: the benchmark's exit code."""
    missed = 0
    for what, value, limit in targets:
        ok = value is not None and value <= limit
        missed += not ok
        shown = "not measured" if value is None else f"{value:.3f}"
        print(f"{'PASS' if ok else 'FAIL'} {what}: {shown} (target <= {limit:g})")
    print(f"{len(targets) - missed}/{len(targets)} targets met")
    return 1 if missed else 0


def _memory_main(payload: str) -> None:
    from profiler.memory import memory_pass_cpu

    spec = json.loads(payload)
    set_heap_mode("tracking")
    _set_threads(spec.get("threads"))
    fn = _load(spec["builder"])(spec["mode"], **spec["kwargs"])
    fn()  # warm-up: lazy inits, allocator pools
    mem = memory_pass_cpu(fn, track=False)
    print(json.dumps({"bytes": mem["mem_peak_bytes"], "method": mem["mem_method"]}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        _memory_main(sys.argv[2])
    else:
        print(__doc__)

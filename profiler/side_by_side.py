"""Round 1 of an interleaved CPU sweep with cells side by side, one per core the sweep leaves free.

*Why.* With ``--interleave`` round 1 times nothing: the interleaved pass (:mod:`profiler.interleave`)
times every cell afterwards, in one process on the quietest core. What round 1 measures (status, the
OOM frontier, the resident high-water mark of the cell's own process, FLOPs, the SDPA kernel) does
not depend on what another process does on another core. On the 2-core VM round 1 took 2.5-3.5
of ``scripts/main.sh``'s 7-7.5 minutes while the second core idled; side by side, main.sh took 5.4-5.8.

*Rules* (:func:`run_side_by_side`):

- **Workers** (:func:`free_workers`): the usable cores less those others kept busy at the
  pre-flight, divided by the cells' thread count; 1 means the plain sequential round. Each worker
  has an executor of its own, made by the caller (a ``fork`` zygote is started here, from the
  calling thread: it dies with the thread that starts it).
- **Waves** of one (T, mode), shorter lengths first, forward before train (:func:`profiler.fanout.waves`):
  nothing in a wave decides anything about another cell of it, and every decision between waves
  (a longer cell skipped after an OOM or a timeout, the memory extrapolated from shorter cells) is
  taken after the wave ends, from the same records as in a sequential sweep.
- **Who runs beside another**: a cell that times nothing (``opts["untimed"]``; a decode cell times
  its prefill in round 1 and runs alone) and whose resident peak, bounded from the longest measured
  cell of its series as if it grew as T^3 (:func:`side_bound`), fits the memory budget divided by
  the workers. A cell with no measured shorter cell (the first length) runs alone. A cell that runs
  alone waits until no other cell runs.

The caller keeps plan order for everything it writes; results reach ``handle`` in the calling thread.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from profiler.cases import Cell
from profiler.fanout import waves
from profiler.records import now_iso

__all__ = ["free_workers", "side_bound", "run_side_by_side", "SIDE_EXPONENT"]

SIDE_EXPONENT = 3.0  # the growth a side-by-side bound assumes from the longest measured cell (the largest class a mixer declares)


def free_workers(cores: int, threads: int, busy: int = 0) -> int:
    """Cells that fit side by side: the cores others leave free, ``threads`` each (at least 1)."""
    return max(1, (max(1, int(cores) - max(0, int(busy)))) // max(1, int(threads)))


def side_bound(history: list[dict], T: int) -> int | None:
    """An upper bound of a cell's resident peak (bytes) from the longest measured shorter cell of its
    series (``history``: its records), its step's memory grown as T^:data:`SIDE_EXPONENT`; None with no such cell."""
    pts = sorted((h["T"], h["mem_peak_bytes"], h["mem_abs_peak_bytes"]) for h in history
                 if h.get("mem_peak_bytes") and h.get("mem_abs_peak_bytes") and h["T"] < T)
    if not pts:
        return None
    T0, step, absolute = pts[-1]
    return int(absolute + step * ((T / T0) ** SIDE_EXPONENT - 1.0))


def run_side_by_side(
    cells: list[Cell],
    *,
    workers: int,
    budget: int | None,
    decide: Callable[[Cell], dict | None],
    prepare: Callable[[Cell], tuple[dict[str, Any], list[dict]]],
    handle: Callable[[Cell, dict, str, float], None],
    started: Callable[[Cell], None],
    executors: list[Any],
    timeout: float | None,
) -> None:
    """Round 1 over ``cells`` (see the module docstring).

    ``decide(cell)``: a result without running (unsupported, skipped) or None; ``prepare(cell)``:
    (the cell's options, its series' measured records); ``handle(cell, result, started_at, wall_s)``
    takes every result (calling thread, as they finish); ``started(cell)`` is told when a cell
    starts; ``executors``: one per worker (``len(executors) >= workers``), each used by one cell at a time.
    """
    if workers < 1 or len(executors) < workers:
        raise ValueError(f"workers: expected 1..{len(executors)} (one executor each), got {workers!r}")
    idle: queue.SimpleQueue = queue.SimpleQueue()
    for ex in executors[:workers]:
        if callable(getattr(ex, "start", None)):
            ex.start()  # here: a zygote dies with the thread that started it, and the workers' threads end
        idle.put(ex)

    def run_one(cell: Cell, opts: dict[str, Any]) -> tuple[dict, float]:
        ex = idle.get()
        t0 = time.monotonic()
        try:
            return ex.run(cell, opts, timeout), time.monotonic() - t0
        finally:
            idle.put(ex)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="round1")
    running: dict[Future, tuple[Cell, str]] = {}

    def collect(until: int) -> None:
        """Hand over finished cells until at most ``until`` run."""
        while len(running) > until:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                cell, at = running.pop(fut)
                result, wall = fut.result()
                handle(cell, result, at, wall)

    try:
        for wave in waves(cells):
            for cell in wave:
                decided = decide(cell)
                if decided is not None:
                    handle(cell, decided, now_iso(), 0.0)
                    continue
                opts, series = prepare(cell)
                bound = side_bound(series, cell.T)
                beside = bool(opts.get("untimed")) and bound is not None and (budget is None or bound * workers <= budget)
                collect(workers - 1 if beside else 0)  # a free worker; alone: none running
                started(cell)
                running[pool.submit(run_one, cell, opts)] = (cell, now_iso())
                if not beside:
                    collect(0)
            collect(0)  # the wave's results decide the next wave
    finally:
        pool.shutdown(wait=not running, cancel_futures=True)  # interrupted: the caller closes the executors

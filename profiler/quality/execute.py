"""Running quality cells: in this process, or in ``jobs`` worker processes at once.

Each worker is a fresh (spawned) Python with ``threads`` torch threads; it generates a task's
splits from ``data_seed`` itself (the same sequences as in the parent) and keeps the last ones,
so cells of one (task, T) share them. A cell's numbers do not depend on where it ran: weights,
batch order and data come from its seeds, and one thread per process keeps the kernels' float
reduction order fixed. Two one-thread jobs on a two-core machine halve a sweep's wall time; the
recorded ``train_time_s`` and ``tokens_per_s`` are then measured next to the other job.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Callable, Iterator

from profiler.records import now_iso

if TYPE_CHECKING:
    from profiler.quality.sweep import QualityCell, QualitySettings

__all__ = ["run_cells", "Outcome"]

Outcome = dict[str, Any]  # {"result", "chance", "started", "wall"}: what the record needs from a run
_SPLITS: dict[tuple, tuple[Any, float]] = {}  # (task, T, data settings) -> (splits, chance): the last one only


def _splits(cell: "QualityCell", s: "QualitySettings"):
    from profiler.quality.sweep import chance_level, make_splits

    key = (cell.task, cell.T, s.data_seed, s.train_size, s.val_size, s.test_size, s.listops_dir, s.allow_pickle)
    if key not in _SPLITS:
        _SPLITS.clear()
        splits = make_splits(cell.task, cell.T, s)
        _SPLITS[key] = (splits, chance_level(cell.task, splits))
    return _SPLITS[key]


def run_one(cell: "QualityCell", s: "QualitySettings") -> Outcome:
    """Train and evaluate one cell here; never raises for a broken cell (it is an error result)."""
    from profiler.quality import sweep

    started, t0 = now_iso(), time.monotonic()
    splits, chance = (None, None) if cell.unsupported else _splits(cell, s)
    result = sweep.run_cell(cell, splits, sweep.train_config(s, cell.task.name))
    return {"result": result, "chance": chance, "started": started, "wall": time.monotonic() - t0}


def _init_worker(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def run_cells(cells: list["QualityCell"], s: "QualitySettings", jobs: int,
              on_start: Callable[["QualityCell"], None] | None = None) -> Iterator[tuple["QualityCell", Outcome]]:
    """Yield ``(cell, outcome)`` as cells finish: in order with ``jobs == 1``, else in the order
    the ``jobs`` workers finish them (at most ``jobs`` cells in flight, taken in plan order)."""
    if jobs == 1 or len(cells) <= 1:
        try:
            for cell in cells:
                if on_start:
                    on_start(cell)
                yield cell, run_one(cell, s)
        finally:
            _SPLITS.clear()
        return
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(s.threads,))
    pending = list(reversed(cells))
    running: dict[Future, "QualityCell"] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell = pending.pop()
                if on_start:
                    on_start(cell)
                running[pool.submit(run_one, cell, s)] = cell
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                yield cell, _outcome(future)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _outcome(future: Future) -> Outcome:
    try:
        return future.result()
    except Exception as exc:  # the worker died (killed, out of memory): the cell is an error record
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"result": {"status": "error", "reason": f"{type(exc).__name__}: {text[:300]}"}, "chance": None,
                "started": now_iso(), "wall": 0.0}

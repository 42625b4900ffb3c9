"""The sweep's execute step for executors that run many cells at once (``ray``, ``submitit``).

Such an executor has ``fans_out = True`` and ``submit_all(items, timeout)``, which takes
``[(cell, opts), ...]`` and yields ``(index, result)`` as cells finish, in any order.

Cells go out in *waves* of one (T, mode): every series' forward cells at T, then its train cells
at T, then the next length. Within a wave nothing depends on anything else; between waves the
sweep's decisions (skip after an OOM or timeout at a shorter length or in forward at the same
length, the memory fallback from shorter cells) are taken exactly as in a sequential sweep, so a
``ray`` run and a ``fork`` run of the same plan decide the same cells.

Exactly once: only this (the submitting) host writes records, one per planned cell. A result for
a cell already written is dropped (and counted in ``duplicates``); a cell for which the executor
yields nothing is recorded ``error`` ("no result"), never left out.
"""

from __future__ import annotations

import time
from itertools import groupby
from typing import Any

from profiler.cases import MODES, Cell
from profiler.placement import stamp_placement
from profiler.records import now_iso

__all__ = ["execute_fanout", "waves"]


def waves(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by (T, mode), shorter lengths first, forward before train."""
    def order(c: Cell) -> tuple[int, int]:
        return c.T, MODES.index(c.mode) if c.mode in MODES else len(MODES)

    return [list(group) for _, group in groupby(sorted(cells, key=order), key=order)]


def execute_fanout(cells: list[Cell], previous: dict, s, executor, writer, run_id: str, threads: int,
                   frontier, history: dict) -> tuple[list[dict], dict[str, Any]]:
    """Decide and run every cell not in ``previous``; returns (records written, statistics:
    ``duplicates`` dropped, ``missing`` filled with an error, ``overhead_s`` per cell)."""
    from profiler.sweep import _Progress, cell_opts, decide_without_running, make_record
    from reports.cells import series_identity

    todo = [c for c in cells if c.key not in previous]
    progress = _Progress(s.progress, len(cells), len(cells) - len(todo))
    written: list[dict] = []
    stats: dict[str, Any] = {"duplicates": 0, "missing": 0, "overhead_s": []}

    def record(cell: Cell, result: dict, started: str, wall: float) -> None:
        rec = make_record(cell, stamp_placement(result, cell.device), run_id, started, wall,
                             s.class_from(cell.label))
        writer.append(rec)
        written.append(rec)
        frontier.add(rec)
        if rec["status"] == "ok":
            history.setdefault(series_identity(cell, threads=threads), []).append(rec)
        if rec.get("executor_overhead_s") is not None:
            stats["overhead_s"].append(rec["executor_overhead_s"])
        progress.done(cell, rec)

    try:
        for wave in waves(todo):
            items, started = [], now_iso()
            for cell in wave:
                decided = decide_without_running(cell, frontier)
                if decided is not None:
                    record(cell, decided, now_iso(), 0.0)
                    continue
                items.append((cell, cell_opts(cell, s, threads, history)))
            done: set[int] = set()
            t0 = time.monotonic()
            for i, result in executor.submit_all(items, s.timeout):
                if i in done or not 0 <= i < len(items):
                    stats["duplicates"] += 1
                    continue
                done.add(i)
                cell = items[i][0]
                progress.cell(cell)
                record(cell, dict(result), started, result.get("worker_wall_s") or time.monotonic() - t0)
            for i, (cell, _) in enumerate(items):
                if i not in done:
                    stats["missing"] += 1
                    record(cell, {"status": "error", "inferred": False,
                                  "reason": f"the {executor.name} executor returned no result for this cell"},
                           started, time.monotonic() - t0)
    finally:
        progress.stop()
    return written, stats

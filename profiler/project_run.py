"""``zoo project`` end to end: plan the cells (or take them from a measured profile, ``against``),
project them (:mod:`profiler.project`), write the records, and the markdown tables
(:mod:`reports.projection`): projected tables, largest fitting length, crossovers, and, with a
measured profile, the calibration table.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from profiler.cases import Cell, canonical_dtype, parse_lengths, parse_mixers, parse_modes, plan_cells
from profiler.devices import get_device
from profiler.lengths import parse_size
from profiler.records import RecordWriter, check_writable, read_records
from zoo.errors import ZooValueError

__all__ = ["run_project", "measured_cells"]


def measured_cells(path: str | os.PathLike) -> tuple[list[Cell], list[dict]]:
    """The cells of a measured profile (the last record per key) and those records."""
    p = Path(path)
    if not p.is_file():
        raise ZooValueError(f"against: expected a profile written by zoo profile, got {str(p)!r} (no such file)")
    latest = {r["key"]: r for r in read_records(p) if r.get("kind") == "cell" and r.get("key")}
    if not latest:
        raise ZooValueError(f"against: {str(p)!r} holds no cell records")
    # the device stays the measured one (it is part of the key); the fake pass always runs on the CPU dispatch
    return [Cell.from_dict({**r, "extra": r.get("extra") or {}}) for r in latest.values()], list(latest.values())


def _planned(mixers, lengths, modes, scope, batch, dim, heads, depth, dtype) -> list[Cell]:
    from profiler.settings import _preset, _shape

    shape = _shape(_preset(None), scope, batch, dim, heads, depth, None, None, None)
    choices = parse_mixers(mixers)
    if not choices:
        raise ZooValueError("mixers: expected at least one mixer, got none")
    return plan_cells(choices, parse_lengths(lengths), parse_modes(modes), dtype=canonical_dtype(dtype), device="cpu",
                      **shape)


def run_project(*, mixers: str | None = None, lengths: str = "1k..1m", modes: str = "both", scope: str | None = None,
                batch: int | None = None, dim: int | None = None, heads: int | None = None, depth: int | None = None,
                dtype: str = "bf16", device: str = "h100", devices_file: str | None = None,
                memory_budget: str | None = None, baseline: str = "softmax", against: str | None = None,
                out: str | os.PathLike = "runs/projection.jsonl", overwrite: bool = False, recalibrate: bool = False,
                command: list[str] | None = None, progress=None) -> dict[str, Any]:
    """Project cells on ``device``; returns ``{"records", "markdown", "path", "seconds"}``."""
    from profiler.project import header, project_cells
    from reports.projection import calibration_markdown, calibration_rows, projection_markdown

    budget = parse_size(memory_budget) if memory_budget is not None else None
    measured: list[dict] = []
    threads = None
    if against is not None:
        cells, measured = measured_cells(against)
        seen = [r.get("threads") for r in measured if r.get("threads")]
        threads = max(set(seen), key=seen.count) if seen else None  # the CPU as the measurement used it
    else:
        cells = _planned(mixers, lengths, modes, scope, batch, dim, heads, depth, dtype)
    target = get_device(device, devices_file, threads=threads, recalibrate=recalibrate)
    for c in cells:
        target.peak_flops(c.dtype)  # a dtype the device has no figure for fails before any work
    path = check_writable(out)
    if path.exists() and path.stat().st_size > 0 and not overwrite:
        raise ZooValueError(f"out: {str(path)!r} already holds records; pass --overwrite to replace it")
    t0 = time.perf_counter()
    records = project_cells(cells, target, budget=budget, progress=progress)
    seconds = time.perf_counter() - t0
    info = {"device": target.key, "mixers": sorted({c.label for c in cells}), "lengths": sorted({c.T for c in cells}),
            "against": str(against) if against else None, "seconds": round(seconds, 2)}
    with RecordWriter(path, truncate=True) as writer:
        writer.append(header(target, list(command if command is not None else sys.argv), info))
        for r in records:
            writer.append(r)
    markdown = projection_markdown(records, baseline)
    if measured:
        markdown += "\n" + calibration_markdown(calibration_rows(records, measured, baseline), baseline)
    return {"records": records, "markdown": markdown, "path": path, "seconds": seconds}

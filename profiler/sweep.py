"""The sweep: plan -> decide -> execute -> record, for every planned cell, then the fit records.

* *decide* (:func:`decide_without_running`): a cell the spec declares unsupported is recorded as
  such; a cell longer than one that hit an OOM or a timeout in the same series is ``skipped``;
* *execute*: an executor (:mod:`profiler.executors`) runs the cell's protocol
  (:mod:`profiler.cell`) with the settings' cell options and a memory prediction extrapolated
  from the series' shorter cells (for mixers the fake pass cannot follow);
* *record* (:func:`make_record`): one JSON line per cell, appended atomically
  (:mod:`profiler.records`); an interrupted sweep keeps every finished cell, ``resume`` runs
  only the missing ones. A cell held for later rounds or the interleaved pass is journalled when
  round 1 ends for it (``kind: "held"``); Ctrl-C and SIGTERM still write its cell record from what
  its rounds measured, and after a SIGKILL the journal is what is left (``zoo compare`` says so).

Series identity (what varies is T alone) is :data:`reports.cells.SERIES_FIELDS`, shared with the
fit records and the report.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from profiler.cases import Cell
from profiler.executors import make_executor
from profiler.interleave import can_interleave, merge_interleaved, pack_groups
from profiler.placement import stamp_placement
from profiler.records import CELL_KEYS, SCHEMA, RecordWriter, check_writable, environment, now_iso, read_records
from profiler.rounds import length_groups, merge_rounds, round_order
from profiler.settings import SweepSettings, plan_profile
from profiler.side_by_side import free_workers, run_side_by_side
from reports.cells import series_identity
from reports.load import HELD
from zoo.errors import ZooValueError

__all__ = ["run_sweep", "run_profile", "decide_without_running", "make_record", "FRONTIER_STATUSES"]

FRONTIER_STATUSES = ("oom", "timeout")  # observed (or predicted) failures that skip longer lengths
UNTIMED = {"untimed": True}  # an interleaved sweep's round 1: the pass times the cell (its own timing only if not)


class _Frontier:
    """The shortest failing T per (label, mode): longer cells of that series are skipped."""

    def __init__(self) -> None:
        self.first: dict[tuple, tuple[int, str]] = {}

    def add(self, rec: dict[str, Any]) -> None:
        if rec.get("status") not in FRONTIER_STATUSES:
            return
        what = "OOM" if rec["status"] == "oom" else "timeout"
        key = (rec["label"], rec["mode"])
        if key not in self.first or rec["T"] < self.first[key][0]:
            self.first[key] = (rec["T"], what)

    def reason(self, cell: Cell) -> str | None:
        """'after OOM at T=...' when a shorter (or, for train, an equal forward) cell failed."""
        for (label, mode), (T0, what) in self.first.items():
            if label != cell.label:
                continue
            if mode == cell.mode and T0 < cell.T:
                return f"after {what} at T={T0}"
            if mode == "forward" and cell.mode == "train" and T0 <= cell.T:
                return f"after forward {what} at T={T0}"
        return None


def decide_without_running(cell: Cell, frontier: _Frontier) -> dict | None:
    if cell.unsupported:
        return {"status": "unsupported", "inferred": True, "reason": cell.unsupported}
    reason = frontier.reason(cell)
    if reason:
        return {"status": "skipped", "inferred": True, "reason": reason}
    return None


def fallback_prediction(history: list[dict], T: int, declared: float | None) -> tuple[int, int] | None:
    """Extrapolate (abs peak, step peak) at T from measured shorter cells of the same series:
    exponent = max(declared class, last local slope), so an undeclared T^2 shows up."""
    pts = sorted((h["T"], h["mem_peak_bytes"], h["mem_abs_peak_bytes"]) for h in history
                 if h.get("mem_peak_bytes") and h.get("mem_abs_peak_bytes") and h["T"] < T)
    if len(pts) < 2:
        return None
    (T1, m1, _), (T2, m2, a2) = pts[-2], pts[-1]
    slope = math.log(m2 / m1) / math.log(T2 / T1) if m1 > 0 and m2 > 0 and T2 > T1 else 0.0
    k = min(3.0, max(declared or 1.0, slope))
    step = m2 * (T / T2) ** k
    return int(a2 - m2 + step), int(step)


def cell_opts(cell: Cell, s: SweepSettings, threads: int, history: dict) -> dict[str, Any]:
    """What ``cell``'s process needs: the settings' options and, when the series' shorter cells
    measured their memory (``history``, by :func:`reports.cells.series_identity`), the peak they
    predict for it (:func:`fallback_prediction`, with the label's declared memory class)."""
    opts = s.cell_opts(threads)
    fb = fallback_prediction(history.get(series_identity(cell, threads=threads), []), cell.T,
                             s.declared.get(cell.label, {}).get("memory"))
    if fb is not None:
        opts["fallback_predicted_abs"], opts["fallback_predicted_step"] = fb
    return opts


def make_record(cell: Cell, result: dict, run_id: str, started: str, wall: float,
                class_from: int | None = None) -> dict[str, Any]:
    """A cell record in the key order of ``docs/RECORDS.md`` (extras after); ``class_from``: the
    spec's shortest T its classes describe (:func:`profiler.builders.declared_classes`)."""
    rec = {k: None for k in CELL_KEYS}
    rec.update(
        kind="cell", schema=SCHEMA, run_id=run_id, key=cell.key, mixer=cell.mixer, label=cell.label,
        config=cell.config, overrides=cell.overrides, scope=cell.scope, mode=cell.mode, T=cell.T, batch=cell.batch,
        dim=cell.dim, heads=cell.heads, depth=cell.depth, dtype=cell.dtype, device=cell.device, causal=cell.causal,
        model=cell.model, pad_fraction=cell.pad_fraction, compile=cell.compile, checkpointing=False,
        class_from=class_from,
    )
    rec.update({k: v for k, v in result.items() if not k.startswith("_")})
    if rec.get("status") is None:
        rec["status"] = "error"
        rec["reason"] = rec.get("reason") or "no status reported"
    rec["inferred"] = bool(rec.get("inferred"))
    if rec["status"] == "ok":
        rec["reason"] = None
    if cell.extra:
        rec["extra"] = cell.extra
    rec["started_at"], rec["wall_s"] = started, round(wall, 4)
    ordered = {"kind": rec.pop("kind"), "schema": rec.pop("schema")}
    ordered.update({k: rec.pop(k) for k in CELL_KEYS if k in rec})
    ordered.update(rec)
    return ordered


def _previous(path: Path, s: SweepSettings) -> dict[str, dict]:
    has_records = path.exists() and path.stat().st_size > 0
    if has_records and not (s.resume or s.overwrite):
        raise ZooValueError(
            f"out: {str(path)!r} already holds records; pass --resume to add the missing cells or --overwrite to replace it"
        )
    if not s.resume or s.overwrite:
        return {}
    return {r["key"]: r for r in read_records(path) if r.get("kind") == "cell" and r.get("key")}


class _Progress:
    """The rich progress bar and failure lines (no-ops when ``enabled`` is False)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.bar = self.task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total, completed=done)

    def cell(self, cell: Cell, note: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{cell.title} {note}".strip())

    def done(self, cell: Cell, record: dict) -> None:
        if self.bar is None:
            return
        if record["status"] not in ("ok", "skipped"):
            tag = "inferred " if record["inferred"] else ""
            self.bar.console.print(f"{cell.title}: {tag}{record['status']}: {record['reason']}", highlight=False, markup=False)
        self.bar.advance(self.task)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description="done")
            self.bar.stop()
            self.bar = None


def _resolve_threads(s: SweepSettings, device: str) -> tuple[int, dict | None]:
    """The thread count every cell runs (recorded in each), and the pre-flight reading of the
    machine when the sweep times under a load probe (CPU). A busy machine gets one line on stderr
    with the remedy; ``threads="auto"`` takes the cores others leave free."""
    import torch

    from profiler import contention as load

    info = None
    if s.probe and device == "cpu":
        info = load.preflight(s.threads)
        load.warn_if_busy(info)
    if s.threads == "auto":
        return (info["auto_threads"] if info else load.auto_threads("auto")), info
    return (torch.get_num_threads() if s.threads is None else s.threads), info


def side_workers(s: SweepSettings, executor: str, device: str, threads: int, contention: dict | None) -> int:
    """How many cells round 1 runs side by side (:mod:`profiler.side_by_side`): only when it times
    nothing (``--interleave``) on the CPU, each cell in a process of its own (``fork``, ``spawn``):
    the cores left free (the pre-flight's busy cores and a cgroup quota taken off), ``threads`` each."""
    if not s.interleave or device != "cpu" or executor not in ("fork", "spawn"):
        return 1
    from profiler.contention import cpu_quota, usable_cores

    cores, _ = usable_cores()
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return free_workers(cores, threads, (contention or {}).get("busy_cores") or 0)


def _report_fanout(name: str, stats: dict, enabled: bool) -> None:
    """One line on stderr: the executor's overhead per cell, and any dropped or filled result."""
    if not enabled:
        return
    over = sorted(stats["overhead_s"])
    line = f"{name}: {len(over)} cells run"
    if over:
        line += f", overhead per cell median {over[len(over) // 2]:.3f} s (max {over[-1]:.3f} s)"
    if stats["duplicates"] or stats["missing"]:
        line += f"; {stats['duplicates']} duplicate results dropped, {stats['missing']} cells without a result"
    print(line, file=sys.stderr)


def _execute(cells: list[Cell], previous: dict, s: SweepSettings, executor, writer, run_id: str, threads: int,
             side_executors: list | None = None):
    """Decide and run every cell not already in ``previous``; returns the records written.
    ``side_executors``: more than one when round 1 runs cells side by side (:func:`side_workers`), one per worker."""
    side_executors = side_executors or []
    planned = {series_identity(c, threads=threads) for c in cells}
    frontier, history = _Frontier(), {}
    for rec in previous.values():
        if series_identity(rec) in planned:  # another sweep's settings in the same file do not count
            frontier.add(rec)
            if rec.get("status") == "ok":
                history.setdefault(series_identity(rec), []).append(rec)
    if getattr(executor, "fans_out", False):  # ray, submitit: many cells at once (profiler/fanout.py)
        from profiler.fanout import execute_fanout

        written, stats = execute_fanout(cells, previous, s, executor, writer, run_id, threads, frontier, history)
        _report_fanout(executor.name, stats, s.progress)
        return written
    todo = [c for c in cells if c.key not in previous]
    progress = _Progress(s.progress, len(cells), len(cells) - len(todo))
    written = []

    def opts_for(cell: Cell) -> dict:
        return cell_opts(cell, s, threads, history)

    def write(cell: Cell, result: dict, started: str, wall: float, shown: bool = False) -> None:
        record = make_record(cell, stamp_placement(result, cell.device), run_id, started, wall,
                             s.class_from(cell.label))
        writer.append(record)
        written.append(record)
        frontier.add(record)
        if record["status"] == "ok" and not shown:  # a held cell fed the history at round 1
            history.setdefault(series_identity(cell, threads=threads), []).append(record)
        if not shown:
            progress.done(cell, record)

    groups = length_groups(todo)
    held: dict[str, list] = {}  # key -> [cell, started, wall, round 1's result, later rounds' results]

    def options(cell: Cell) -> dict:
        # with --interleave no timing of its own: the pass times it, and a cell the pass could not
        # time is timed alone afterwards; a decode cell keeps its own timing (its prefill is timed here only)
        untimed = s.interleave and can_interleave(cell, {"status": "ok"}) and cell.mode != "decode"
        return {**opts_for(cell), **UNTIMED} if untimed else opts_for(cell)

    def settle(cell: Cell, result: dict, started: str, wall: float) -> None:
        """Round 1's result: held until the interleaved pass or the last round (ok, measured cells), else written."""
        later = s.interleave and can_interleave(cell, {"status": "ok"})  # timed again with the others
        hold = can_interleave(cell, result) if later else (
            s.rounds > 1 and result.get("status") == "ok" and not result.get("inferred"))
        if hold:
            held[cell.key] = [cell, started, wall, result, []]
            first = make_record(cell, stamp_placement(result, cell.device), run_id, started, wall,
                             s.class_from(cell.label))
            # journalled now: a sweep killed (SIGKILL: no unwinding) before its cell record keeps round 1's
            writer.append({**first, "kind": HELD})
            # longer cells of the series predict their memory from this one (fallback_prediction)
            history.setdefault(series_identity(cell, threads=threads), []).append(first)
            progress.done(cell, {"status": "ok"})
        else:
            write(cell, result, started, wall)

    try:
        if len(side_executors) > 1:  # round 1 times nothing: cells side by side (profiler.side_by_side)
            run_side_by_side(todo, workers=len(side_executors), budget=s.memory_budget,
                             decide=lambda c: decide_without_running(c, frontier),
                             prepare=lambda c: (options(c), history.get(series_identity(c, threads=threads), [])),
                             handle=settle, started=progress.cell, executors=side_executors, timeout=s.timeout)
            plan = {c.key: i for i, c in enumerate(todo)}
            for key in sorted(held, key=plan.__getitem__):  # plan order: the pass's rotation, the records
                held[key] = held.pop(key)
        else:
            for group in groups:  # round 1: the full protocol, lengths in order (the OOM frontier)
                for cell in group:
                    progress.cell(cell)
                    started, t0 = now_iso(), time.monotonic()
                    result = decide_without_running(cell, frontier)
                    if result is None:
                        result = executor.run(cell, options(cell), s.timeout)
                    settle(cell, result, started, time.monotonic() - t0)
        # rounds 2..k: timing only, over the whole sweep again, so a cell's rounds are minutes apart
        # (a slow spell of the host lasts up to a minute) while the cells of one length stay together
        for r in range(2, s.rounds + 1):
            for group in groups:
                for cell in round_order([c for c in group if c.key in held], r):
                    progress.cell(cell, f"round {r}/{s.rounds}")
                    t0 = time.monotonic()
                    opts = {**opts_for(cell), "timing_only": True, "known_peak_bytes": held[cell.key][3].get("mem_peak_bytes")}
                    held[cell.key][4].append(executor.run(cell, opts, s.timeout))
                    held[cell.key][2] += time.monotonic() - t0
        if s.interleave:
            _interleaved_pass(held, s, executor, threads, progress)
            _time_the_rest_alone(held, s, executor, progress, opts_for)
    finally:  # an interrupted sweep still writes what its rounds measured
        for cell, started, wall, first, more in held.values():
            merged = merge_interleaved(first, *more[:2]) if s.interleave else merge_rounds(first, more, s.rounds)
            write(cell, merged, started, wall, shown=True)
        progress.stop()
    return written


def _interleaved_pass(held: dict[str, list], s: SweepSettings, executor, threads: int, progress) -> None:
    """The held cells timed in turn, one process per group that fits the memory budget
    (:mod:`profiler.interleave`); each cell's result goes to its held entry."""
    from profiler.cell import CACHING_HEAP_FOOTPRINT

    cells = [entry[0] for entry in held.values()]
    # a decode cell holds its state (and prompt), not a step's peak
    peaks = {e[0].key: e[3].get("mem_peak_bytes") or e[3].get("state_bytes") for e in held.values()}
    for group in pack_groups(cells, peaks, s.memory_budget, CACHING_HEAP_FOOTPRINT):
        timeout = None if s.timeout is None else s.timeout * len(group)
        progress.cell(group[0], f"interleaved timing of {len(group)} cells")
        opts = {**s.cell_opts(threads), "timeout_s": timeout, "group": [c.to_dict() for c in group[1:]],
                "per_call_s": {c.key: held[c.key][3].get("time_median_s") for c in group}}  # round 1's, if timed: the blocks
        t0 = time.monotonic()
        result = executor.run(group[0], opts, timeout)
        timed = result.get("group") or {}
        for cell in group:  # a group that died gives every cell its reason; they keep their own timing
            held[cell.key][4].append(timed.get(cell.key) or {"status": result.get("status"), "reason": result.get("reason")})
            held[cell.key][2] += (time.monotonic() - t0) / len(group)


def _time_the_rest_alone(held: dict[str, list], s: SweepSettings, executor, progress, opts_for) -> None:
    """A cell the interleaved pass could not time (its build or a call failed there, the pass died)
    and that round 1 did not time is timed in its own process, as a sweep without ``--interleave``
    would (``time_method: isolated``); the result goes to its held entry after the pass's."""
    for cell, _, _, first, more in held.values():
        if first.get("time_median_s") is not None or (more and more[0].get("status") == "ok"):
            continue
        progress.cell(cell, "timed alone (not by the interleaved pass)")
        t0 = time.monotonic()
        opts = {**opts_for(cell), "timing_only": True, "known_peak_bytes": first.get("mem_peak_bytes")}
        more.append(executor.run(cell, opts, s.timeout))
        held[cell.key][2] += time.monotonic() - t0


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block (main thread only), so a sweep stopped by
    ``kill`` or ``timeout`` unwinds as after Ctrl-C: the cells held for later rounds or the
    interleaved pass are written and the cell processes are stopped. SIGKILL cannot be caught."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(cells: list[Cell], settings: SweepSettings | None = None, **kwargs: Any) -> Path:
    """Run planned cells, appending one record each to ``settings.out`` (returned), then the fit
    records. ``kwargs`` build the settings when none are given (``out=...``, ``isolate=...``: the
    fields of :class:`SweepSettings`)."""
    from profiler.fit import fit_records

    s = settings if settings is not None else SweepSettings(**{k: str(v) if k == "out" else v for k, v in kwargs.items()})
    path = check_writable(s.out)
    previous = _previous(path, s)
    device = cells[0].device if cells else "cpu"
    threads, contention = _resolve_threads(s, device)
    executor = make_executor(s.executor, isolate=s.isolate, device=device, preload=[s.builder] if s.builder else [],
                             options={**s.executor_options, "threads": threads, "timeout": s.timeout})
    workers = side_workers(s, executor.name, device, threads, contention)
    side = [executor] + [make_executor(executor.name, isolate=s.isolate, device=device,
                                       preload=[s.builder] if s.builder else []) for _ in range(workers - 1)]
    run_id = uuid.uuid4().hex[:12]
    header = {"kind": "header", "schema": SCHEMA, "run_id": run_id, "created": now_iso(),
              "command": list(s.command if s.command is not None else sys.argv), "env": environment(threads, device),
              "settings": {**s.header(threads, executor.name, device), "side_by_side": workers}}
    if contention is not None:
        header["contention"] = contention
    writer = RecordWriter(path, truncate=s.overwrite)
    try:
        writer.append(header)
        with terminate_as_interrupt():  # `kill`, `timeout`, a CI's stop: held records are still written
            written = _execute(cells, previous, s, executor, writer, run_id, threads, side)
        latest = {**previous, **{r["key"]: r for r in written}}
        mine = [latest[c.key] for c in cells if c.key in latest]
        for fit in fit_records(mine, s.declared, run_id=run_id):
            writer.append(fit)
    finally:
        for ex in side[1:]:
            ex.close()
        executor.close()
        writer.close()
    if s.progress:
        from rich.console import Console

        from profiler.table import print_table

        print_table(mine, s.baseline, Console())
    return path


def run_profile(*, progress: bool = True, **options: Any) -> Path:
    """Sweep registered mixers over lengths and write records to ``out`` (returned).

    Options are those of :func:`profiler.settings.plan_profile` (a preset, "default" when none:
    all mixers, 1k..16k, forward and train, mixer scope, D=256, 4 heads, B=1; explicit options
    win) and the fields of :class:`SweepSettings`. ``out`` must not hold records unless
    ``resume`` or ``overwrite``. User errors raise ZooValueError before anything is written.
    """
    cells, settings = plan_profile(progress=progress, **options)
    return run_sweep(cells, settings)

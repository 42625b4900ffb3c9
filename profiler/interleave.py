"""Interleaved timing: the cells of a sweep timed in one process, one sample of each in turn.

Why: on a shared machine (a cloud VM above all) the host's speed drifts by 1.5x over seconds to a
minute with nothing inside the VM to see it (other tenants share the host's caches and memory
bandwidth). Measured on the 2-core CI VM, one thread, softmax and skeinformer forward at T = 2048
alternated sample by sample in one process, six fresh processes: softmax's median ranged over
44-65 ms, skeinformer's over 27-42 ms, while their ratio stayed within 0.58-0.67. Cells timed one
after another (one process each) see different spells of the host: two quiet runs of the same sweep
agreed within 15% on 12 of 40 ratios to softmax. Cells whose samples are taken in turn see the same
spells, so ratios between mixers and the curve of one mixer over lengths keep their shape.

Protocol (``zoo profile --interleave``, :func:`profiler.sweep.run_sweep`): round 1 measures every
cell in its own process as usual (status, memory, FLOPs, OOM frontier) but does not time it (a
decode cell keeps its own timing: its prefill is timed there only); then one more process
(:func:`measure_group`) builds the steps of the ok cells (eager; a decode cell is prefilled once and
its step is one new token, as in :mod:`profiler.decode`; compiled cells keep their own timing),
makes the first call and one more (:data:`PASS_WARMUP_CALLS`), sizes each cell's sample (a block of
calls lasting >= 50 ms, :data:`PASS_BLOCK_S`: from round 1's time per call where there is one, or
the warm-up call when it is long, else from 1-3 more calls) and takes samples in rotation, in plan
order. After each rotation the host's
drift is read from the samples of the other cells taken at the same moment and taken out of each
sample (:mod:`profiler.drift`), and a cell leaves the rotation when :func:`profiler.timing.enough`
says so over its corrected samples (the same rule, budget and load probe as an isolated cell, its
budget counting its own samples' time; at least :data:`MIN_SAMPLES`); a cell still noisy when its
budget is spent samples for as long again, once (:data:`EXTEND`). While fewer than
:data:`COMPANIONS` + 1 cells rotate, cells that have had enough sample on beside them (the cheapest
first), so that the drift can still be read at the last cells' samples. The final samples are corrected
with the drift read from the whole pass; the raw samples are kept beside. The group is sized so that
the caching heap's footprint of its cells together (3x each one's measured peak) fits the memory
budget (:func:`pack_groups`); a sweep that does not fit runs several groups.

A cell the group could not time (its build or a call failed, the group died or timed out) is timed
in its own process afterwards, as without ``--interleave`` (``time_method: "isolated"``, and
``interleave_error`` says why). A decode cell's prefill time is round 1's.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

import torch

from profiler.affinity import restore
from profiler.builders import load_builder, load_ref, torch_dtype
from profiler.cases import Cell
from profiler.contention import PROBE_FIELDS
from profiler.drift import drift_factors, sensitivity
from profiler.heap import release_heap, set_heap_mode
from profiler.memory import is_oom
from profiler.rounds import TIMING_FIELDS
from profiler.timing import (MAX_REPS, CellTimeout, Sampler, block_for, enough, size_block, summarise_samples, timer,
                             warm_up)

__all__ = ["measure_group", "pack_groups", "can_interleave", "merge_interleaved", "GROUP_FIELDS"]

# samples a cell takes at least in the pass: its spread (the noisy flag) is read from them, and the
# IQR of 3 samples is half their range (train steps at 4k took 3 at 0.5 s a cell and were flagged by chance)
MIN_SAMPLES = 5

# a cell whose samples, the host's drift taken out, are still noisy when its budget is spent goes on
# until it has spent EXTEND x as much, once (PROFILING.md: re-measure a noisy cell within a budget);
# its flag is then read from all its samples. Measured on main.sh's sweep, 2-core VM: most cells
# flagged at 5-9 samples are not flagged at twice as many, while a cell with its own jitter stays flagged.
EXTEND = 2.0

# the drift is re-read to judge who has enough after a rotation, unless the last reading is more
# than 1 / REJUDGE_COST of the time since (a few small cells left rotating fast)
REJUDGE_COST = 5.0

# a sample in the pass is a block of calls lasting at least this long (an isolated cell's: 25 ms,
# profiler.timing.MIN_BLOCK_S). The host's jitter within 20-50 ms is what the drift correction cannot
# take out; a longer sample averages it. Measured on main.sh's 200 cells, the pass alone in turn with
# 25 ms and 50 ms samples (2-core VM, 2026-12-02, same per-cell budget and pass time): noisy cells
# 12.5% and 14.5% against 7% and 11%.
PASS_BLOCK_S = 0.05

# the last cells rotating keep this many other cells sampling beside them (cells that had enough
# already): the drift at a sample is read from the other cells' samples nearest in time, and a cell
# left alone, or with one other, was corrected by nothing or by that one cell's own jitter. Seen on
# the 2-core VM: fnet train 2048, still noisy when its budget was spent, took 27 of its 51 samples
# alone (corrected IQR/median 25%).
COMPANIONS = 4

# warm-up in the pass: the first call (set-up, checked) and one more (the caching heap's pages are
# then faulted in); the cell was warmed for its timing in round 1, and in rotation every sample
# follows the other cells' work whatever the warm-up did
PASS_WARMUP_CALLS = 2

# what the group reports per cell, replacing the isolated round's values
GROUP_FIELDS = PROBE_FIELDS + ("time_block", "warmup_calls", "warmup_s")


def can_interleave(cell: Cell, result: dict[str, Any]) -> bool:
    """A cell the group can time: measured ok in round 1 (not inferred), eager."""
    return result.get("status") == "ok" and not result.get("inferred") and not cell.compile


def pack_groups(cells: Iterable[Cell], peaks: dict[str, int], cap_bytes: int | None,
                footprint: float) -> list[list[Cell]]:
    """Consecutive cells (plan order) in groups whose summed ``footprint`` x peak fits ``cap_bytes``
    (no cap: one group). A cell too large for any group alone is a group of its own."""
    groups: list[list[Cell]] = []
    used = 0.0
    for cell in cells:
        need = footprint * max(0, int(peaks.get(cell.key) or 0))
        if groups and (cap_bytes is None or used + need <= cap_bytes):
            groups[-1].append(cell)
            used += need
        else:
            groups.append([cell])
            used = need
    return groups


class _Entry:
    """One cell of the rotation: its run (fields), step and sampler."""

    def __init__(self, run, step, sampler: Sampler):
        self.run, self.step, self.sampler = run, step, sampler
        self.block, self.spent = 1, 0.0
        self.until: float | None = None  # extended (still noisy when its budget was spent): until this much spent
        # (midpoint, seconds, clean, own) per sample, in order; own: False for a companion's sample
        # (taken after the cell had enough, beside the last cells: it reads the drift, it does not count)
        self.marks: list[tuple[float, float, bool, bool]] = []

    def run_block(self) -> None:
        for _ in range(self.block):
            self.step.fn()


def _prepare(run, builder, device: torch.device, clock, probe_ref: str | None, per_call: float | None) -> _Entry:
    """Build, first call (checked), warm-up; the sampler's block size (from round 1's time per call,
    ``per_call``, when there is one; else sized here)."""
    from profiler.cell import _first_call

    dtype = torch_dtype(run.cell.dtype)
    if run.cell.mode == "decode":  # one new token per call, after a prefill (profiler.decode)
        from profiler.decode import token_step

        step = token_step(run.cell, device, dtype)
    else:
        step = builder(run.cell, device, dtype)
    run.lap("build")
    _first_call(run, step, device)  # timing_only: a check, nothing counted
    n, seconds = warm_up(step.fn, device=device, calls=1, min_calls=PASS_WARMUP_CALLS, min_seconds=0.0,
                         deadline=run.deadline)
    run.note(warmup_calls=n, warmup_s=seconds)
    entry = _Entry(run, step, Sampler(clock, load_ref(probe_ref)() if probe_ref else None))
    warm_call = seconds / max(1, n - 1)  # the warm-up's calls after the first
    if per_call or warm_call >= 2 * PASS_BLOCK_S:  # a call this long is a block of one however it varies
        entry.block = block_for(per_call or warm_call, PASS_BLOCK_S)
    else:  # round 1 did not time it (forward, train): 1 to 3 warm calls size the block
        entry.block = size_block(entry.sampler, clock, step.fn, PASS_BLOCK_S)
        for kept in (entry.sampler.clean, entry.sampler.dirty, entry.sampler.cpu):
            kept.clear()  # a sizing call long enough to be a sample was not taken in turn with the others
    return entry


def _used(e: _Entry, contended: bool = False) -> list[int]:
    """The marks whose samples count: the cell's own (not a companion's), clean ones; and the
    contended ones too when the cell could not get enough clean samples (``contended``,
    :meth:`profiler.timing.Sampler.result`'s verdict)."""
    used = [k for k, m in enumerate(e.marks) if m[3] and m[2]]
    return used + [k for k, m in enumerate(e.marks) if m[3] and not m[2]] if contended else used


def _applied(e: _Entry, factors: list[float], used: list[int]) -> tuple[float, list[float]]:
    """(b, the factor taken out of each ``used`` mark's sample): the host's drift (``factors``, one
    per mark) to the power ``b``, the cell's own sensitivity to it fitted on those marks."""
    b = sensitivity([e.marks[k][1] for k in used], [factors[k] for k in used])
    return b, [factors[k] ** b for k in used]


def _corrected(e: _Entry, factors: list[float], used: list[int]) -> list[float]:
    """The ``used`` marks' samples with the host's drift taken out (:func:`_applied`)."""
    return [e.marks[k][1] / f for k, f in zip(used, _applied(e, factors, used)[1])]


def _leaves(e: _Entry, factors: list[float], budget: float) -> bool:
    """Whether the entry leaves the rotation: the stopping rule (:func:`profiler.timing.enough`) over
    its samples with the drift taken out; a cell still noisy when its budget is spent samples for
    as long again (:data:`EXTEND`), once."""
    clean = _corrected(e, factors, _used(e))
    taken = len(e.marks)
    if e.until is not None:  # extended: until its time is spent (or the rule's other exits)
        return e.spent >= e.until or enough(clean, taken, 0.0, math.inf, MIN_SAMPLES)
    if not enough(clean, taken, e.spent, budget, MIN_SAMPLES):
        return False
    if MIN_SAMPLES <= len(clean) < MAX_REPS and summarise_samples(clean)["noisy"]:
        e.until = EXTEND * e.spent
        return False
    return True


def _rotate(entries: list[_Entry], budget: float, deadline: float | None) -> None:
    """One sample of each cell in turn until every cell has enough (or the deadline passes). Who
    has enough is judged after a rotation, on samples with the drift read so far taken out; the
    reading costs ~25 us a sample, so it is redone at most once per :data:`REJUDGE_COST` x its cost."""
    active = list(entries)
    judged, cost = -math.inf, 0.0
    while active:
        for e, own in [(e, True) for e in active] + [(e, False) for e in _companions(entries, active)]:
            if deadline is not None and time.monotonic() > deadline:
                raise CellTimeout("deadline passed during the interleaved timing")
            t0 = time.perf_counter()
            seconds = e.sampler.take(e.run_block, e.block)
            t1 = time.perf_counter()
            e.spent += t1 - t0
            clean = e.sampler.last_clean
            if not own:  # a companion's reading: not one of its samples (its counts and verdict stand)
                e.sampler.forget_last()
            e.marks.append((0.5 * (t0 + t1), seconds, clean, own))
        now = time.perf_counter()
        if now - judged < REJUDGE_COST * cost:
            continue
        factors = dict(zip(map(id, entries), drift_factors([[(m[0], m[1]) for m in x.marks] for x in entries])))
        active = [e for e in active if not _leaves(e, factors[id(e)], budget)]
        judged = time.perf_counter()
        cost = judged - now


def _companions(entries: list[_Entry], active: list[_Entry]) -> list[_Entry]:
    """Cells that have left the rotation and sample on beside the last ones, so that each sample of
    a cell still rotating has :data:`COMPANIONS` other cells around it to read the drift from: the
    cheapest per sample first. Their samples there are drift readings only: they do not count for
    them (taken in a few cells' company at the end of the pass, they moved fnet's medians by up to
    14% when they counted)."""
    short = COMPANIONS - (len(active) - 1)
    if short <= 0:
        return []
    done = [e for e in entries if e.marks and all(e is not a for a in active)]
    return sorted(done, key=lambda e: e.spent / len(e.marks))[:short]


def _fields(e: _Entry, factors: list[float], order: int, size: int, start: float) -> dict[str, Any] | None:
    """The cell's timing fields: its samples with the host's drift taken out (``factors``, one per
    mark, :mod:`profiler.drift`), the raw ones beside, and when each was taken (midpoint, seconds
    after ``start``, the pass's first sample). None: fewer than the minimum."""
    from profiler.cell import note_contention

    info = {"block": e.block}
    e.sampler.result(MIN_SAMPLES, info)  # the contention fields and the verdict _used follows
    used = _used(e, bool(info.get("contended")))
    if len(used) < MIN_SAMPLES:
        return None
    note_contention(e.run, info, e.sampler.probe)
    raw = [e.marks[k][1] for k in used]
    b, applied = _applied(e, factors, used)
    fields = {k: e.run.result[k] for k in GROUP_FIELDS if k in e.run.result}
    fields.update(summarise_samples([s / f for s, f in zip(raw, applied)]), time_method="interleaved",
                  interleave_position=order, interleave_cells=size, time_raw_samples=raw,
                  time_raw_median_s=summarise_samples(raw)["time_median_s"],
                  time_sample_at_s=[round(e.marks[k][0] - start, 4) for k in used],
                  drift_range=[round(min(applied), 4), round(max(applied), 4)],
                  drift_sensitivity=round(b, 4))
    return fields


def measure_group(cells: list[Cell], opts: dict[str, Any]) -> dict[str, Any]:
    """Time ``cells`` interleaved in this process. Returns ``{"status": "ok", "group": {key: fields}}``
    with a cell's timing fields, or ``{key: {"status": ..., "reason": ...}}`` for a cell that could
    not be timed here (it keeps its own timing)."""
    from profiler.cell import _Run, _set_up, classify_exception

    runs = [_Run(c, {**opts, "timing_only": True, "group": None}, None) for c in cells]
    lead = runs[0]
    group: dict[str, dict[str, Any]] = {}
    managed = False
    entries: list[_Entry] = []
    try:
        device = torch.device(cells[0].device)
        managed, _ = _set_up(lead, device)
        if managed:
            set_heap_mode("caching")  # every step's steady state, as an isolated cell's timing
        builder = load_builder(opts.get("builder"))
        clock = timer(device)
        for run in runs:
            run.deadline = lead.deadline
            try:
                per_call = (opts.get("per_call_s") or {}).get(run.cell.key)
                entries.append(_prepare(run, builder, device, clock, opts.get("probe"), per_call))
            except CellTimeout:
                raise
            except Exception as exc:  # this cell keeps its isolated timing; the others go on
                status, reason = classify_exception(exc)
                group[run.cell.key] = {"status": status, "reason": f"interleaved timing: {reason}"}
                if is_oom(exc):
                    break  # the group does not fit after all: time what was built
        _rotate(entries, float(opts.get("time_budget_s", 2.0)), lead.deadline)
    except Exception as exc:  # a deadline or a failure mid-rotation: cells with enough samples count
        status, reason = classify_exception(exc)
        for e in entries:
            group.setdefault(e.run.cell.key, {"status": status, "reason": f"interleaved timing: {reason}"})
    finally:
        if managed:
            set_heap_mode("tracking")
            release_heap()
        restore(lead.previous_cpus)
    shared = {k: lead.result.get(k) for k in ("cpus", "threads")}
    factors = drift_factors([[(m[0], m[1]) for m in e.marks] for e in entries])
    start = min((e.marks[0][0] for e in entries if e.marks), default=0.0)
    for i, e in enumerate(entries):
        fields = _fields(e, factors[i], i, len(entries), start)
        if fields is not None:
            group[e.run.cell.key] = {**shared, **fields, "status": "ok"}
    return {"status": "ok", "inferred": False, "group": group}


def merge_interleaved(first: dict[str, Any], timed: dict[str, Any] | None,
                      alone: dict[str, Any] | None = None) -> dict[str, Any]:
    """Round 1's result with the group's timing when the group timed the cell; else the timing of
    the cell alone (``alone``: a timing-only run after the pass, for a cell round 1 did not time;
    or round 1's own, for a decode cell), said so (``time_method: "isolated"``, ``interleave_error``).
    A cell timed by neither keeps status ok (its memory and FLOPs stand) with no time."""
    merged = dict(first)
    merged["time_isolated_s"] = first.get("time_median_s")
    if timed is not None and timed.get("status") == "ok":
        merged.update({k: v for k, v in timed.items() if k != "status"})
        return merged
    error = (timed or {}).get("reason") or "not timed by the interleaved pass (the sweep stopped before it)"
    merged.update(time_method="isolated", interleave_error=error)
    if alone is not None and alone.get("status") == "ok" and alone.get("time_samples"):
        merged.update(summarise_samples(alone["time_samples"]))
        merged.update({k: alone[k] for k in TIMING_FIELDS if k in alone})
        merged["time_isolated_s"] = merged["time_median_s"]
    elif alone is not None:
        merged["interleave_error"] = f"{error}; timed alone: {alone.get('status')}: {alone.get('reason')}"
    return merged

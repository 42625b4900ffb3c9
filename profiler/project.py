"""``zoo project``: peak memory, FLOPs and a roofline time for cells no machine here can run.

Each cell runs once under ``FakeTensorMode`` (shapes only: nothing is allocated, so 1M tokens
cost what 1k cost) with the profiler's live-tensor tracker (the predicted peak, as in a sweep's
fake pass) and a roofline counter: per dispatched op, FLOPs by torch's counter (plus the
profiler's FFT/SDPA formulas) and bytes moved (its tensor inputs and outputs; views move none),
and time = sum over ops of max(FLOPs / peak FLOP/s, bytes / bandwidth) + the device's per-op
overhead. The device comes from :mod:`profiler.devices`.

A mixer the fake pass cannot follow (data-dependent shapes: ``.item()``, ``nonzero``) runs for
real at a few small lengths (2k..8k) under the same counters, and every length is the fit of
those (``method: "fit_real"``). A series (label, mode) whose fake pass gets slow with T (Python loops over blocks) switches to a
closed-form fit: each quantity as ``a + b T^k`` through the fake passes at the last three
shorter lengths; such records say ``method: "fit"`` and the lengths fitted.

Records: ``kind = "projection"``, ``projected: true`` (``docs/RECORDS.md``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from profiler.cases import Cell
from profiler.devices import Device
from profiler.records import SCHEMA, now_iso

__all__ = ["RooflineCounter", "fake_costs", "project_cells", "project_series", "SLOW_FAKE_S"]

SLOW_FAKE_S = 2.0  # a fake pass predicted slower than this switches the series to the fit
FIT_POINTS = 4  # shorter lengths the fit uses (at least 3)
_THREADS = [0]  # the caller's torch threads, for the real passes
REAL_LENGTHS = (2048, 4096, 8192)  # real passes for mixers the fake pass cannot follow
QUANTITIES = ("mem_peak_bytes", "mem_abs_peak_bytes", "flops", "bytes_moved", "time_s", "ops")


class RooflineCounter(TorchDispatchMode):
    """Per-op roofline time on ``device`` for ``dtype``; totals of FLOPs, bytes and ops."""

    def __init__(self, device: Device, dtype: str):
        super().__init__()
        from profiler.flops import flop_counter

        self.registry = flop_counter().flop_registry
        self.peak, self.bw, self.over = device.peak_flops(dtype), device.bandwidth_bytes_per_s, device.op_overhead_s
        self.flops = self.bytes = self.time = 0.0
        self.ops = 0
        self.compute_s = self.memory_s = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False) or func.overloadpacket.__name__ in ("detach", "alias", "lift_fresh"):
            return out
        formula = self.registry.get(func.overloadpacket)
        flops = float(formula(*args, **kwargs, out_val=out)) if formula is not None else 0.0
        moved = sum(t.numel() * t.element_size() for t in tree_flatten((args, kwargs, out))[0]
                    if isinstance(t, torch.Tensor))
        c, m = flops / self.peak, moved / self.bw
        self.flops, self.bytes, self.ops = self.flops + flops, self.bytes + moved, self.ops + 1
        self.compute_s += c if c >= m else 0.0
        self.memory_s += m if m > c else 0.0
        self.time += max(c, m) + self.over
        return out


def fake_costs(cell: Cell, device: Device, builder=None, fake: bool = True) -> dict[str, Any]:
    """One fake step of ``cell`` (built on the CPU dispatch): peaks, FLOPs, bytes, roofline time.
    ``fake=False``: a real step (small T only: :func:`_real_points`)."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    from profiler.builders import build_step, torch_dtype
    from profiler.memory import LiveTensorTracker

    builder = builder or build_step
    with FakeTensorMode() if fake else contextlib.nullcontext():
        tracker = LiveTensorTracker()
        with tracker:
            step = builder(cell, torch.device("cpu"), torch_dtype(cell.dtype))
            if cell.scope == "model" and cell.mode == "train":
                # steady state, as the memory pass measures it: the optimizer's state exists
                del_out = step.fn()
                del del_out
                if step.reset is not None:
                    step.reset()
            before = tracker.current
            tracker.mark()
            counter = RooflineCounter(device, cell.dtype)
            with counter:
                out = step.fn()
            del out
            peak = tracker.window_peak
    bound = "compute" if counter.compute_s >= counter.memory_s else "memory"
    return {"mem_peak_bytes": int(peak), "mem_abs_peak_bytes": int(before + peak), "flops": counter.flops,
            "bytes_moved": counter.bytes, "time_s": counter.time, "ops": counter.ops, "bound": bound}


def _fit(points: list[tuple[int, dict]], T: int) -> dict[str, Any]:
    """Each quantity at T from ``y = a + b T^k`` through the last three points (lengths in a
    geometric progression, ratio r): r^k = (y3 - y2) / (y2 - y1), k clipped to [0, 2]; a
    quantity that did not grow stays at its last value."""
    import math

    (T1, p1), (T2, p2), (T3, p3) = points[-3:]
    r = T3 / T2
    out: dict[str, Any] = {}
    for q in QUANTITIES:
        y1, y2, y3 = float(p1[q]), float(p2[q]), float(p3[q])
        if y3 - y2 <= 0 or y2 - y1 <= 0:
            out[q] = max(y3, y2 + (y3 - y2) * max(0.0, T - T3) / max(T3 - T2, 1)) if y3 > y2 else y3
            continue
        k = min(2.0, max(0.0, math.log((y3 - y2) / (y2 - y1)) / math.log(r)))
        b = (y3 - y2) / (T3 ** k - T2 ** k) if k > 0 else 0.0
        out[q] = y3 + b * (T ** k - T3 ** k) if k > 0 else y3
    for q in ("mem_peak_bytes", "mem_abs_peak_bytes", "ops"):
        out[q] = int(round(out[q]))
    out["bound"] = points[-1][1].get("bound")
    return out


def _real_points(cell: Cell, device: Device, builder=None) -> list[tuple[int, dict]]:
    """For a mixer with data-dependent shapes: real (tiny) passes at REAL_LENGTHS under the same
    tracker and counter, the points of its closed-form fit."""
    import dataclasses

    points = []
    single = torch.get_num_threads()
    torch.set_num_threads(_THREADS[0] or single)  # real compute: every thread the caller had
    try:
        for T in REAL_LENGTHS:
            try:
                points.append((T, fake_costs(dataclasses.replace(cell, T=T), device, builder, fake=False)))
            except Exception:  # a length this mixer does not accept: the others may do
                continue
    finally:
        torch.set_num_threads(single)
    return points


def _expected_seconds(times: list[tuple[int, float]], T: int) -> float | None:
    """The next fake pass's seconds, from the growth of the last two (exponent clipped to [0, 2])."""
    import math

    if len(times) < 2:
        return None
    (T1, s1), (T2, s2) = times[-2], times[-1]
    k = min(2.0, max(0.0, math.log(max(s2, 1e-6) / max(s1, 1e-6)) / math.log(T2 / T1))) if T2 > T1 else 1.0
    return s2 * (T / T2) ** k


def _data_dependent(exc: BaseException) -> bool:
    """The fake pass met a data-dependent op (``.item()``, ``nonzero``), not a real error."""
    names = " ".join(type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    return any(k in names for k in ("DataDependent", "DynamicOutputShape", "UnsupportedOperator"))


class _Series:
    """The passes of one series: fake passes (timed), and the small real ones when needed."""

    def __init__(self, device: Device, builder, slow_s: float):
        self.device, self.builder, self.slow_s = device, builder, slow_s
        self.done: list[tuple[int, dict]] = []  # (T, fake result), ascending T
        self.times: list[tuple[int, float]] = []
        self.real: list[tuple[int, dict]] | None = None
        self.fake_error: str | None = None

    def fake(self, cell: Cell) -> dict:
        """A fake pass; raises on any failure (``fake_error`` set when it is data-dependent)."""
        if self.fake_error is not None:  # failed at a shorter length: fails here too
            raise RuntimeError(self.fake_error)
        from profiler.cell import one_line

        t0 = time.perf_counter()
        try:
            res = fake_costs(cell, self.device, self.builder)
        except Exception as exc:
            if _data_dependent(exc):
                self.fake_error = one_line(exc)
            raise
        self.times.append((cell.T, time.perf_counter() - t0))
        self.done.append((cell.T, res))
        self.done.sort(key=lambda p: p[0])
        return {**res, "status": "ok", "method": "fake", "fake_s": round(self.times[-1][1], 4), "reason": None}

    def fit(self, T: int, points: list[tuple[int, dict]], method: str = "fit") -> dict:
        return {**_fit(points, T), "status": "ok", "method": method, "fit_lengths": [p[0] for p in points],
                "reason": None}

    def one(self, cell: Cell) -> dict:
        """The sequential rule: fake while fast, then the fit; small real passes for a mixer the
        fake pass cannot follow; any other failure is an ``error`` record with its reason."""
        from profiler.cell import one_line

        expected = _expected_seconds(self.times, cell.T)
        if expected is not None and expected > self.slow_s and len(self.done) >= 3:
            return self.fit(cell.T, self.done[-FIT_POINTS:])
        try:
            return self.fake(cell)
        except Exception as exc:
            if self.fake_error is None:
                return {"status": "error", "reason": one_line(exc)}
        if self.real is None:
            self.real = _real_points(cell, self.device, self.builder)
        if len(self.real) >= 3:
            return self.fit(cell.T, self.real, "fit_real")
        return {"status": "error", "reason": f"the fake pass cannot run this cell: {self.fake_error}"}


def _agrees(fit: dict, fake: dict) -> bool:
    """The fit through the shortest lengths reproduces the fake pass at the longest."""
    for q, tol in (("mem_peak_bytes", 0.01), ("mem_abs_peak_bytes", 0.01), ("flops", 0.01), ("time_s", 0.05)):
        a, b = float(fit[q]), float(fake[q])
        if abs(a - b) > tol * max(abs(b), 1.0):
            return False
    return True


def project_series(cells: list[Cell], device: Device, builder=None, slow_s: float = SLOW_FAKE_S) -> list[dict]:
    """Results for the cells of one (label, mode) series (in the order given).

    Shortcut for five or more lengths: fake passes at the three shortest and the longest; when
    the fit through the three reproduces the longest (memory and FLOPs within 1%, time within
    5%), the lengths between are that fit (``method: "fit"``, ``validated_at``). Otherwise, or
    when the longest pass would be slow, every length by :meth:`_Series.one`."""
    order = sorted(range(len(cells)), key=lambda i: cells[i].T)
    run = [i for i in order if not cells[i].unsupported]
    out: dict[int, dict] = {i: {"status": "unsupported", "reason": cells[i].unsupported}
                            for i in order if cells[i].unsupported}
    series = _Series(device, builder, slow_s)
    if len(run) >= 5:
        try:
            first = {i: series.fake(cells[i]) for i in run[:3]}
            expected = _expected_seconds(series.times, cells[run[-1]].T)
            if expected is not None and expected <= slow_s:
                last = series.fake(cells[run[-1]])
                points = series.done[:3]
                if _agrees(_fit(points, cells[run[-1]].T), last):
                    out.update(first)
                    out[run[-1]] = last
                    for i in run[3:-1]:
                        out[i] = {**series.fit(cells[i].T, points), "validated_at": cells[run[-1]].T}
                    return [out[i] for i in range(len(cells))]
        except Exception:  # the sequential rule below says what failed, cell by cell
            pass
    series = _Series(device, builder, slow_s)
    for i in run:
        out[i] = series.one(cells[i])
    return [out[i] for i in range(len(cells))]


def projection_record(cell: Cell, result: dict, device: Device, run_id: str, budget: float) -> dict[str, Any]:
    rec = {"kind": "projection", "schema": SCHEMA, "projected": True, "run_id": run_id, "key": cell.key,
           "mixer": cell.mixer, "label": cell.label, "config": cell.config, "overrides": cell.overrides,
           "scope": cell.scope, "mode": cell.mode, "T": cell.T, "batch": cell.batch, "dim": cell.dim,
           "heads": cell.heads, "depth": cell.depth, "dtype": cell.dtype, "device": device.key,
           "device_name": device.name, "causal": cell.causal, "model": cell.model, "pad_fraction": cell.pad_fraction}
    rec.update({"status": result["status"], "reason": result.get("reason")})
    for q in (*QUANTITIES, "bound", "method", "fit_lengths", "validated_at", "fake_s"):
        rec[q] = result.get(q)
    rec["memory_budget_bytes"] = budget
    rec["fits"] = None if rec["mem_abs_peak_bytes"] is None else bool(rec["mem_abs_peak_bytes"] <= budget)
    return rec


def project_cells(cells: list[Cell], device: Device, *, budget: float | None = None, builder=None,
                  progress=None) -> list[dict]:
    """Projection records for ``cells`` on ``device`` (budget: 90% of its memory by default)."""
    budget = float(budget) if budget else 0.9 * device.memory_bytes
    run_id = uuid.uuid4().hex[:12]
    series: dict[tuple, list[Cell]] = {}
    for c in cells:
        series.setdefault((c.label, c.mode, c.scope, c.batch, c.dtype), []).append(c)
    records = []
    threads = torch.get_num_threads()
    _THREADS[0] = threads
    torch.set_num_threads(1)  # fake passes compute nothing (the real ones get the threads back)
    try:
        for key, group in series.items():
            if progress is not None:
                progress(f"{key[0]} {key[1]}")
            for cell, result in zip(group, project_series(group, device, builder)):
                records.append(projection_record(cell, result, device, run_id, budget))
    finally:
        torch.set_num_threads(threads)
    return records


def header(device: Device, command: list[str], info: dict) -> dict[str, Any]:
    return {"kind": "header", "schema": SCHEMA, "run_id": None, "created": now_iso(), "command": command,
            "projected": True, "device_table": device.as_dict(), "settings": info}

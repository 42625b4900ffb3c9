"""``zoo project``: peak memory, FLOPs and a roofline time for cells no machine here can run.

Each cell runs once under ``FakeTensorMode`` (shapes only: nothing is allocated, so 1M tokens
cost what 1k cost) with the profiler's live-tensor tracker (the predicted peak, as in a sweep's
fake pass) and a roofline counter: per dispatched op, FLOPs by torch's counter (plus the
profiler's FFT/SDPA formulas) and bytes moved (its tensor inputs and outputs; views move none),
and time = sum over ops of max(FLOPs / peak FLOP/s, bytes / bandwidth) + the device's per-op
overhead. The device comes from :mod:`profiler.devices`.

A mixer the fake pass cannot follow (data-dependent shapes: ``.item()``, ``nonzero``) runs for
real at a few small lengths (512..2k) under the same counters, and every length is the fit of
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
REAL_LENGTHS = (512, 1024, 2048)  # real passes for mixers the fake pass cannot follow
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
    for T in REAL_LENGTHS:
        try:
            points.append((T, fake_costs(dataclasses.replace(cell, T=T), device, builder, fake=False)))
        except Exception:  # a length this mixer does not accept: the others may do
            continue
    return points


def _expected_seconds(times: list[tuple[int, float]], T: int) -> float | None:
    """The next fake pass's seconds, from the growth of the last two (exponent clipped to [0, 2])."""
    import math

    if len(times) < 2:
        return None
    (T1, s1), (T2, s2) = times[-2], times[-1]
    k = min(2.0, max(0.0, math.log(max(s2, 1e-6) / max(s1, 1e-6)) / math.log(T2 / T1))) if T2 > T1 else 1.0
    return s2 * (T / T2) ** k


def project_series(cells: list[Cell], device: Device, builder=None, slow_s: float = SLOW_FAKE_S) -> list[dict]:
    """Results for the cells of one (label, mode) series, ascending T: fake passes while they are
    fast, then the fit (module docstring). Each result has ``method`` and ``fake_s``."""
    from profiler.cell import one_line

    done: list[tuple[int, dict]] = []
    results, times = [], []  # times: (T, seconds) of each fake pass
    real_points = None  # small real passes, for a mixer the fake pass cannot follow
    for cell in sorted(cells, key=lambda c: c.T):
        if cell.unsupported:
            results.append({"status": "unsupported", "reason": cell.unsupported})
            continue
        expected = _expected_seconds(times, cell.T)
        if expected is not None and expected > slow_s and len(done) >= 3:
            pts = done[-FIT_POINTS:]
            results.append({**_fit(pts, cell.T), "status": "ok", "method": "fit", "fit_lengths": [p[0] for p in pts],
                            "reason": None})
            continue
        t0 = time.perf_counter()
        try:
            res = fake_costs(cell, device, builder)
        except Exception as exc:  # data-dependent shapes: the fake pass cannot follow this mixer
            if real_points is None:
                real_points = _real_points(cell, device, builder)
            if len(real_points) >= 3:
                results.append({**_fit(real_points, cell.T), "status": "ok", "method": "fit_real",
                                "fit_lengths": [p[0] for p in real_points], "reason": None})
            else:
                results.append({"status": "error", "reason": f"the fake pass cannot run this cell: {one_line(exc)}"})
            continue
        times.append((cell.T, time.perf_counter() - t0))
        done.append((cell.T, res))
        results.append({**res, "status": "ok", "method": "fake", "fake_s": round(times[-1][1], 4), "reason": None})
    return results


def projection_record(cell: Cell, result: dict, device: Device, run_id: str, budget: float) -> dict[str, Any]:
    rec = {"kind": "projection", "schema": SCHEMA, "projected": True, "run_id": run_id, "key": cell.key,
           "mixer": cell.mixer, "label": cell.label, "config": cell.config, "overrides": cell.overrides,
           "scope": cell.scope, "mode": cell.mode, "T": cell.T, "batch": cell.batch, "dim": cell.dim,
           "heads": cell.heads, "depth": cell.depth, "dtype": cell.dtype, "device": device.key,
           "device_name": device.name, "causal": cell.causal, "model": cell.model, "pad_fraction": cell.pad_fraction}
    rec.update({"status": result["status"], "reason": result.get("reason")})
    for q in (*QUANTITIES, "bound", "method", "fit_lengths", "fake_s"):
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
    for key, group in series.items():
        if progress is not None:
            progress(f"{key[0]} {key[1]}")
        ordered = sorted(group, key=lambda c: c.T)
        for cell, result in zip(ordered, project_series(ordered, device, builder)):
            records.append(projection_record(cell, result, device, run_id, budget))
    return records


def header(device: Device, command: list[str], info: dict) -> dict[str, Any]:
    return {"kind": "header", "schema": SCHEMA, "run_id": None, "created": now_iso(), "command": command,
            "projected": True, "device_table": device.as_dict(), "settings": info}

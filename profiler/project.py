"""``zoo project``: peak memory, FLOPs and a roofline time for cells no machine here can run.

Each cell runs once under ``FakeTensorMode`` (shapes only: nothing is allocated, so 1M tokens
cost what 1k cost) with the profiler's live-tensor tracker (the predicted peak, as in a sweep's
fake pass) and a roofline counter: per dispatched op, FLOPs by torch's counter (plus the
profiler's FFT/SDPA formulas) and bytes moved (its tensor inputs and outputs; views move none),
and time = sum over ops of max(FLOPs / peak FLOP/s, bytes / bandwidth) + the device's per-op
overhead (FFT ops at the device's FFT rate where it has one: the CPU's is measured). Ops that
launch no kernel (``prim.device``, sizes, aliases, views) cost nothing. The device comes from
:mod:`profiler.devices`.

A mixer the fake pass cannot follow (data-dependent shapes: ``.item()``, ``nonzero``) runs for
real at a few small lengths (2k..8k) under the same counters, and every length is the fit of
those (``method: "fit_real"``). Which lengths of a series get a fake pass and which the
closed-form fit ``a + b T^k`` (a mixer with a Python loop over chunks dispatches ops in
proportion to T, so its fake pass does too) is planned by :mod:`profiler.project_series`;
records say ``method``, ``fit_lengths``, ``validated_at`` and ``projected_by``.

Records: ``kind = "projection"``, ``projected: true`` (``docs/RECORDS.md``).
"""

from __future__ import annotations

import gc
import uuid
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from profiler.cases import Cell
from profiler.devices import Device
from profiler.flops import flop_registry
from profiler.memory import traced_step
from profiler.project_series import QUANTITIES, SLOW_FAKE_S, fit_at
from profiler.records import SCHEMA, now_iso

__all__ = ["RooflineCounter", "fake_costs", "project_cells", "project_series", "fit_at", "SLOW_FAKE_S"]

_THREADS = [0]  # the caller's torch threads, for the real passes
REAL_LENGTHS = (2048, 4096, 8192)  # real passes for mixers the fake pass cannot follow


_NO_KERNEL = frozenset({"detach", "alias", "lift_fresh", "is_contiguous", "is_strides_like_format",
                        "is_non_overlapping_and_dense", "dim", "size", "stride", "numel", "storage_offset",
                        "is_same_size", "promote_types", "result_type"})


def _metadata_only(func) -> bool:
    """An op that launches no kernel and moves no data: ``prim.device`` / ``prim.layout`` (a
    tensor's attributes), ``sym_size`` and the like, aliases. Counting its tensor input as
    bytes moved would charge a full read per ``x.device`` in a Python loop."""
    name = func.overloadpacket.__name__
    return func.namespace == "prim" or name.startswith("sym_") or name in _NO_KERNEL


_FFT_OPS = frozenset({torch.ops.aten._fft_r2c, torch.ops.aten._fft_c2c, torch.ops.aten._fft_c2r})


class RooflineCounter(TorchDispatchMode):
    """Per-op roofline time on ``device`` for ``dtype``; totals of FLOPs, bytes and ops."""

    def __init__(self, device: Device, dtype: str):
        super().__init__()
        self.registry = flop_registry()
        self.peak, self.bw, self.over = device.peak_flops(dtype), device.bandwidth_bytes_per_s, device.op_overhead_s
        self.fft_peak = device.fft_flops_per_s or self.peak
        self.flops = self.bytes = self.time = 0.0
        self.ops = 0
        self.compute_s = self.memory_s = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.count(func, args, kwargs, out)
        return out

    def count(self, func, args, kwargs, out) -> None:
        """Charge one dispatched op (its FLOPs, bytes, roofline time)."""
        if func.namespace == "prim" or getattr(func, "is_view", False) or _metadata_only(func):
            return
        formula = self.registry.get(func.overloadpacket)
        flops = float(formula(*args, **kwargs, out_val=out)) if formula is not None else 0.0
        moved = sum(t.numel() * t.element_size() for t in tree_flatten((args, kwargs, out))[0]
                    if isinstance(t, torch.Tensor))
        c, m = flops / (self.fft_peak if func.overloadpacket in _FFT_OPS else self.peak), moved / self.bw
        self.flops, self.bytes, self.ops = self.flops + flops, self.bytes + moved, self.ops + 1
        self.compute_s += c if c >= m else 0.0
        self.memory_s += m if m > c else 0.0
        self.time += max(c, m) + self.over


def fake_costs(cell: Cell, device: Device, builder=None, fake: bool = True) -> dict[str, Any]:
    """One fake step of ``cell`` (built on the CPU dispatch): peaks, FLOPs, bytes, roofline time.
    ``fake=False``: a real step (small T only: :func:`_real_points`)."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    from profiler.builders import build_step, torch_dtype

    builder = builder or build_step
    counter = RooflineCounter(device, cell.dtype)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        before, peak, _ = traced_step(lambda: builder(cell, torch.device("cpu"), torch_dtype(cell.dtype)), counter)
    bound = "compute" if counter.compute_s >= counter.memory_s else "memory"
    return {"mem_peak_bytes": int(peak), "mem_abs_peak_bytes": int(before + peak), "flops": counter.flops,
            "bytes_moved": counter.bytes, "time_s": counter.time, "ops": counter.ops, "bound": bound}


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


def _data_dependent(exc: BaseException) -> bool:
    """The fake pass met a data-dependent op (``.item()``, ``nonzero``), not a real error."""
    names = " ".join(type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    return any(k in names for k in ("DataDependent", "DynamicOutputShape", "UnsupportedOperator"))


def project_series(cells: list[Cell], device: Device, builder=None, slow_s: float = SLOW_FAKE_S) -> list[dict]:
    """Results for the cells of one (label, mode) series (in the order given), planned by
    :mod:`profiler.project_series` (which lengths get a fake pass, which the fit)."""
    from profiler import project_series as plan

    return plan.project_series(cells, device, builder, slow_s, costs=lambda c, d, b: fake_costs(c, d, b),
                               real_points=_real_points, data_dependent=_data_dependent)


def projection_record(cell: Cell, result: dict, device: Device, run_id: str, budget: float) -> dict[str, Any]:
    rec = {"kind": "projection", "schema": SCHEMA, "projected": True, "run_id": run_id, "key": cell.key,
           "mixer": cell.mixer, "label": cell.label, "config": cell.config, "overrides": cell.overrides,
           "scope": cell.scope, "mode": cell.mode, "T": cell.T, "batch": cell.batch, "dim": cell.dim,
           "heads": cell.heads, "depth": cell.depth, "dtype": cell.dtype, "device": device.key,
           "device_name": device.name, "causal": cell.causal, "model": cell.model, "pad_fraction": cell.pad_fraction}
    rec.update({"status": result["status"], "reason": result.get("reason")})
    for q in (*QUANTITIES, "bound", "method", "projected_by", "fit_form", "fit_lengths", "validated_at", "fake_s"):
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
    gc.collect()
    gc.freeze()  # the objects alive now outlive the passes: a collection need not walk them (0.15 s each)
    try:
        for key, group in series.items():
            if progress is not None:
                progress(f"{key[0]} {key[1]}")
            for cell, result in zip(group, project_series(group, device, builder)):
                records.append(projection_record(cell, result, device, run_id, budget))
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
    return records


def header(device: Device, command: list[str], info: dict) -> dict[str, Any]:
    return {"kind": "header", "schema": SCHEMA, "run_id": None, "created": now_iso(), "command": command,
            "projected": True, "device_table": device.as_dict(), "settings": info}

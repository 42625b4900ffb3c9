"""Which lengths of a ``zoo project`` series get a fake pass, and which the closed-form fit.

A fake pass costs per dispatched op, not per token: a vectorised mixer dispatches the same ops
at 1k and 1M tokens, but one with a Python loop over chunks (the chunked scans, poolingformer's
query blocks, skeinformer's sketch loop) dispatches ops in proportion to T, so its 1M-token pass
is thousands of times its 1k pass. The plan, per (label, mode) series:

1. a fake pass at the shortest length T0 and one at T0/2 (an auxiliary length, no record);
2. the same op count at both (no loop): fake passes at the second shortest length T1 and the
   longest too, and when the fit ``a + b T^k`` through T0/2, T0, T1 reproduces the longest
   (memory and FLOPs within 1%, time within 5%), the lengths between are that fit
   (``validated_at`` the longest); if it does not, the same with the fit through T0, T1, T2;
3. more ops at T0 than at T0/2 (a loop): fake passes at T0/8 and T0/4 as well, and when the
   quadratic through T0/8, T0/4, T0/2 reproduces the direct pass at T0 exactly (memory, FLOPs,
   ops are affine in the number of chunks once a few chunks exist; bytes and time can gain a
   T^2 term, :func:`poly_at`), every longer length is that quadratic
   (``validated_at`` T0); when it does not, step 4 (step 2 would need a pass at the longest
   length, which a loop makes costly);
4. otherwise the sequential rule: fake passes while the next one is predicted cheap (a fixed
   cost per op, :data:`SECONDS_PER_OP`, times the op count extrapolated in T: never this
   machine's clock, so the plan and its figures are the same on any machine), then the fit
   through the last three.

No pass runs twice: every pass is kept by length. Records say how they were obtained
(``method``, ``fit_lengths``, ``validated_at``, ``projected_by``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

from profiler.cases import Cell

__all__ = ["project_series", "fit_at", "poly_at", "SLOW_FAKE_S", "QUANTITIES", "FORMS"]

SLOW_FAKE_S = 2.0  # a fake pass predicted slower than this is not run (the fit answers)
SECONDS_PER_OP = 1e-3  # a fake pass's cost per dispatched op, a conservative figure for this 2-core CPU (chunk loops: ~2.5e-4)
QUANTITIES = ("mem_peak_bytes", "mem_abs_peak_bytes", "flops", "bytes_moved", "time_s", "ops")
_TOLERANCE = (("mem_peak_bytes", 0.01), ("mem_abs_peak_bytes", 0.01), ("flops", 0.01), ("time_s", 0.05))
# "exactly": to 10 parts per million (a few bytes of rounding in a chunk count's allocation)
_EXACT = (("mem_peak_bytes", 1e-5), ("mem_abs_peak_bytes", 1e-5), ("flops", 1e-5), ("time_s", 1e-5), ("ops", 1e-5))
_MIN_AUX_T = 16  # no auxiliary length below this
FORMS = {"power": "a + b T^k", "quadratic": "a + b T + c T^2"}


def _exponent(T: tuple[float, float, float], y: tuple[float, float, float], low: float = 0.0) -> float:
    """k of ``y = a + b T^k`` through three points (any increasing T), by bisection on [low, 2]:
    (T3^k - T2^k) / (T2^k - T1^k) grows with k, so it meets (y3 - y2) / (y2 - y1) once."""
    T1, T2, T3 = T
    target = (y[2] - y[1]) / (y[1] - y[0])

    def ratio(k: float) -> float:
        if k < 1e-12:
            return math.log(T3 / T2) / math.log(T2 / T1)
        return (T3 ** k - T2 ** k) / (T2 ** k - T1 ** k)

    lo, hi = low, 2.0
    if target <= ratio(lo):
        return lo
    if target >= ratio(hi):
        return hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def fit_at(points: list[tuple[int, dict]], T: int) -> dict[str, Any]:
    """Each quantity at T from ``y = a + b T^k`` through the last three points, k in [1, 2]
    (a step over T tokens reads and writes each of them: its memory, FLOPs, bytes and time
    grow at least linearly, so a flatter stretch is a change of regime, not the asymptote) and
    k in [0, 2] for the op count; a quantity that did not grow along them stays at its last
    value (or grows linearly when only its last step grew). Exact for an affine or a pure
    power-law quantity."""
    (T1, p1), (T2, p2), (T3, p3) = points[-3:]
    out: dict[str, Any] = {}
    for q in QUANTITIES:
        y1, y2, y3 = float(p1[q]), float(p2[q]), float(p3[q])
        if y3 - y2 <= 0 or y2 - y1 <= 0:
            out[q] = y3 + (y3 - y2) * max(0.0, T - T3) / (T3 - T2) if y3 > y2 else y3
            continue
        k = _exponent((T1, T2, T3), (y1, y2, y3), 0.0 if q == "ops" else 1.0)
        if k < 1e-9:  # logarithmic growth at the boundary: stay at the last value
            out[q] = y3
            continue
        b = (y3 - y2) / (T3 ** k - T2 ** k)
        out[q] = y3 + b * (T ** k - T3 ** k)
    for q in ("mem_peak_bytes", "mem_abs_peak_bytes", "ops"):
        out[q] = int(round(out[q]))
    out["bound"] = points[-1][1].get("bound")
    return out


def poly_at(points: list[tuple[int, dict]], T: int) -> dict[str, Any]:
    """Each quantity at T from the quadratic ``a + b T + c T^2`` through the last three points
    (Lagrange form): exact for a quantity that is a polynomial of degree <= 2 in T, as memory,
    FLOPs, bytes and roofline time are for a loop over fixed-size chunks (bytes and time can
    have a T^2 term: a per-chunk op that touches a whole-length tensor, e.g. autograd's
    ``select_backward`` of indexing one chunk)."""
    (T1, p1), (T2, p2), (T3, p3) = points[-3:]
    w1 = (T - T2) * (T - T3) / ((T1 - T2) * (T1 - T3))
    w2 = (T - T1) * (T - T3) / ((T2 - T1) * (T2 - T3))
    w3 = (T - T1) * (T - T2) / ((T3 - T1) * (T3 - T2))
    out: dict[str, Any] = {q: w1 * float(p1[q]) + w2 * float(p2[q]) + w3 * float(p3[q]) for q in QUANTITIES}
    for q in ("mem_peak_bytes", "mem_abs_peak_bytes", "ops"):
        out[q] = int(round(out[q]))
    out["bound"] = points[-1][1].get("bound")
    return out


def _agrees(fit: dict, fake: dict, tolerance=_TOLERANCE) -> bool:
    for q, tol in tolerance:
        a, b = float(fit[q]), float(fake[q])
        if abs(a - b) > tol * max(abs(b), 1.0):
            return False
    return True


class Series:
    """The fake passes of one series, kept by length; the small real ones when needed."""

    def __init__(self, cell: Cell, device, builder, slow_s: float, costs: Callable, real_points: Callable,
                 data_dependent: Callable[[BaseException], bool]):
        self.cell, self.device, self.builder, self.slow_s = cell, device, builder, slow_s
        self.costs, self.real_points, self.data_dependent = costs, real_points, data_dependent
        self.done: dict[int, dict] = {}  # T -> fake result
        self.seconds: dict[int, float] = {}
        self.real: list[tuple[int, dict]] | None = None
        self.fake_error: str | None = None

    def points(self) -> list[tuple[int, dict]]:
        return sorted(self.done.items())

    def fake(self, T: int) -> dict:
        """The fake pass at T (once); raises on failure (``fake_error`` when data-dependent)."""
        if T in self.done:
            return self.done[T]
        if self.fake_error is not None:  # failed at another length: fails here too
            raise RuntimeError(self.fake_error)
        from profiler.cell import one_line

        t0 = time.perf_counter()
        try:
            res = self.costs(dataclasses.replace(self.cell, T=T), self.device, self.builder)
        except Exception as exc:
            if self.data_dependent(exc):
                self.fake_error = one_line(exc)
            raise
        self.seconds[T] = time.perf_counter() - t0
        self.done[T] = res
        return res

    def expected_seconds(self, T: int) -> float | None:
        """The fake pass at T: :data:`SECONDS_PER_OP` times the op count extrapolated linearly
        from the two longest passes (never fewer than the last). A constant, not this machine's
        clock: which lengths get a fake pass (and so the projected figures) must not depend on
        how fast or busy the machine was."""
        pts = self.points()
        if not pts:
            return None
        t2, r2 = pts[-1]
        per_op = SECONDS_PER_OP
        ops = float(r2["ops"])
        if len(pts) >= 2 and T > t2:
            t1, r1 = pts[-2]
            ops += max(0.0, (r2["ops"] - r1["ops"]) / (t2 - t1)) * (T - t2)
        return per_op * ops

    def record(self, T: int) -> dict:
        return {**self.done[T], "status": "ok", "method": "fake", "fake_s": round(self.seconds[T], 4), "reason": None}

    def fitted(self, T: int, points: list[tuple[int, dict]], method: str = "fit", validated_at: int | None = None,
               form: str = "power") -> dict:
        values = poly_at(points, T) if form == "quadratic" else fit_at(points, T)
        return {**values, "status": "ok", "method": method, "fit_form": FORMS[form],
                "fit_lengths": [p[0] for p in points[-3:]], "validated_at": validated_at, "reason": None}

    def one(self, T: int) -> dict:
        """The sequential rule: the fake pass while predicted cheap, then the fit through the
        last three; small real passes for a mixer the fake pass cannot follow; any other
        failure is an ``error`` record with its reason."""
        from profiler.cell import one_line

        if T in self.done:
            return self.record(T)
        expected = self.expected_seconds(T)
        if expected is not None and expected > self.slow_s and len(self.done) >= 3:
            return self.fitted(T, self.points())
        try:
            self.fake(T)
            return self.record(T)
        except Exception as exc:
            if self.fake_error is None:
                return {"status": "error", "reason": one_line(exc)}
        if self.real is None:
            self.real = self.real_points(dataclasses.replace(self.cell, T=T), self.device, self.builder)
        if len(self.real) >= 3:
            return self.fitted(T, self.real, "fit_real")
        return {"status": "error", "reason": f"the fake pass cannot run this cell: {self.fake_error}"}


def _no_loop(s: Series, lengths: list[int], triple: tuple[int, int, int]) -> dict[int, dict] | None:
    """Step 2: the fit through ``triple`` fills the lengths that got no fake pass when it
    reproduces the pass at the longest length (which must be predicted cheap)."""
    fits = [(T, s.fake(T)) for T in triple]
    longest = lengths[-1]
    expected = s.expected_seconds(longest)
    if expected is None or expected > s.slow_s or not _agrees(fit_at(fits, longest), s.fake(longest)):
        return None
    faked = [T for T in lengths if T in s.done]
    out = {T: s.record(T) for T in faked}
    out.update({T: s.fitted(T, fits, validated_at=longest) for T in lengths if T not in s.done})
    return out


def _loop(s: Series, lengths: list[int]) -> dict[int, dict] | None:
    """Step 3: the quadratic through T0/8, T0/4, T0/2 must reproduce the pass at T0 exactly."""
    T0 = lengths[0]
    if T0 // 8 < _MIN_AUX_T:
        return None
    fits = [(T, s.fake(T)) for T in (T0 // 8, T0 // 4, T0 // 2)]
    if not _agrees(poly_at(fits, T0), s.fake(T0), _EXACT):
        return None
    out = {T0: s.record(T0)}
    out.update({T: s.fitted(T, fits, validated_at=T0, form="quadratic") for T in lengths[1:]})
    return out


def _shortcut(s: Series, lengths: list[int]) -> dict[int, dict] | None:
    """Steps 1-3 of the plan (module docstring): results by T, or None (the sequential rule)."""
    T0 = lengths[0]
    if T0 // 2 < _MIN_AUX_T or len(lengths) < 4:
        return None
    if s.fake(T0)["ops"] == s.fake(T0 // 2)["ops"]:
        return _no_loop(s, lengths, (T0 // 2, T0, lengths[1])) or _no_loop(s, lengths, tuple(lengths[:3]))
    # a loop: step 2 would check at the longest length, whose pass costs in proportion to T (never
    # cheap), after paying for three passes; when the quadratic does not hold, the sequential rule
    return _loop(s, lengths)


def project_series(cells: list[Cell], device, builder=None, slow_s: float = SLOW_FAKE_S, *, costs: Callable,
                   real_points: Callable, data_dependent: Callable[[BaseException], bool]) -> list[dict]:
    """Results for the cells of one (label, mode) series (in the order given): the plan of the
    module docstring. ``costs(cell, device, builder)`` is one fake pass."""
    order = sorted(range(len(cells)), key=lambda i: cells[i].T)
    run = [i for i in order if not cells[i].unsupported]
    out: dict[int, dict] = {i: {"status": "unsupported", "reason": cells[i].unsupported}
                            for i in order if cells[i].unsupported}
    if run:
        s = Series(cells[run[0]], device, builder, slow_s, costs, real_points, data_dependent)
        try:
            by_T = _shortcut(s, [cells[i].T for i in run])
        except Exception:  # the sequential rule below says what failed, cell by cell
            by_T = None
        for i in run:
            out[i] = by_T[cells[i].T] if by_T is not None else s.one(cells[i].T)
    for r in out.values():
        if r.get("status") == "ok":
            r["projected_by"] = _projected_by(r)
    return [out[i] for i in range(len(cells))]


def _projected_by(r: dict) -> str:
    """How the figures of one result were obtained, in words (the record's ``projected_by``)."""
    if r["method"] == "fake":
        return "fake pass"
    lengths = ",".join(str(t) for t in r.get("fit_lengths") or [])
    kind = "real passes" if r["method"] == "fit_real" else "fake passes"
    checked = f"; checked against a fake pass at T={r['validated_at']}" if r.get("validated_at") else ""
    return f"extrapolated ({r.get('fit_form')}) from {kind} at T={lengths}{checked}"

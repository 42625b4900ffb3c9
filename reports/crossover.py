"""Crossover lengths: from which T a mixer is cheaper than the baseline and stays cheaper, measured
where the sign change is inside the sweep, extrapolated from both fits (with a bootstrap interval)
where it is not, searched up to :data:`reports.fit.CROSSOVER_CAP` tokens (beyond: "none below 1M
tokens"). Imported by :mod:`reports.fit` as well, so ``reports.fit.find_crossover`` keeps working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from reports.fit import CROSSOVER_CAP, Fit
from reports.formats import format_length, format_tokens

__all__ = ["Crossover", "find_crossover"]

_MAX_EXTRAPOLATION = CROSSOVER_CAP


@dataclass
class Crossover:
    """Where a mixer becomes cheaper than the baseline (and stays cheaper).

    kind: ``measured`` (sign change inside the measured lengths, interpolated on log T),
    ``always`` (cheaper at every common length), ``extrapolated`` (from the two fits, with a
    bootstrap interval), ``none`` (not within the measured range and not predicted below 2^40),
    ``unknown`` (too few points to say).
    """

    kind: str
    length: float | None = None
    lo: float | None = None
    hi: float | None = None
    note: str = ""
    bracketed: bool = False  # measured between lo and hi, one side failed: nothing to interpolate
    capped: bool = False  # kind "none" because the fits do not cross below CROSSOVER_CAP

    @property
    def text(self) -> str:
        if self.kind == "always":
            return f"cheaper at every measured length (from T={_fmt_len(self.length)})" + _note(self.note)
        if self.kind == "measured":
            if self.bracketed:
                return f"between {_fmt_len(self.lo)} and {_fmt_len(self.hi)} (measured; {self.note})"
            return f"T ≈ {_fmt_len(self.length)} (measured)" + _note(self.note)
        if self.kind == "extrapolated":
            ci = ""
            if self.lo is not None and self.hi is not None:
                hi = f"> {format_length(CROSSOVER_CAP)}" if self.hi > CROSSOVER_CAP else _fmt_len(self.hi)
                ci = f" [{_fmt_len(self.lo)}, {hi}]"
            return f"T ≈ {_fmt_len(self.length)}{ci} (extrapolated from the fits)" + _note(self.note)
        if self.kind == "none":
            head = f"none below {format_length(CROSSOVER_CAP)} tokens" if self.capped else "no crossover"
            return head + _note(self.note)
        return "unknown" + _note(self.note)


def _note(note: str) -> str:
    return f"; {note}" if note else ""


_fmt_len = format_tokens


def _first_cheaper(fit_a: Fit | np.ndarray, fit_b: Fit | np.ndarray, start: float) -> float | None:
    """Smallest T >= start from which a + bT^k of A stays below B's (None if not below the cap)."""
    if start >= _MAX_EXTRAPOLATION:
        return None
    grid = np.exp2(np.linspace(math.log2(start), math.log2(_MAX_EXTRAPOLATION), 1201))  # (G,)

    def params(f):
        return (f.k, f.a, f.b) if isinstance(f, Fit) else tuple(f)

    ka, aa, ba = params(fit_a)
    kb, ab, bb = params(fit_b)
    diff = np.log(aa + ba * grid**ka) - np.log(ab + bb * grid**kb)  # < 0: A cheaper
    worse = np.flatnonzero(diff >= 0)
    if len(worse) == 0:
        return float(grid[0])
    last = worse[-1]
    if last == len(grid) - 1:
        return None
    # interpolate the zero between grid[last] and grid[last + 1] on log T
    d0, d1 = diff[last], diff[last + 1]
    x0, x1 = math.log2(grid[last]), math.log2(grid[last + 1])
    return float(2.0 ** (x0 + (x1 - x0) * d0 / (d0 - d1)))


def find_crossover(
    lengths: Sequence[int],
    mixer: Sequence[float | None],
    baseline: Sequence[float | None],
    fit_mixer: Fit | None = None,
    fit_baseline: Fit | None = None,
) -> Crossover:
    """Crossover of a lower-is-better cost (time or memory) against the baseline.

    ``mixer[i]`` / ``baseline[i]`` is the cost at ``lengths[i]``: a positive number, ``math.inf``
    for a failed cell (OOM, timeout: the mixer that survives is the cheaper one there) or None
    where the cell is missing.
    """
    rows = sorted(
        (T, a, b) for T, a, b in zip(lengths, mixer, baseline) if a is not None and b is not None
    )
    rows = [(T, a, b) for T, a, b in rows if not (math.isinf(a) and math.isinf(b))]
    if not rows:
        return Crossover("unknown", note="no length where both were measured")
    T = np.array([r[0] for r in rows], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.array([math.log(a) - math.log(b) if not (math.isinf(a) or math.isinf(b))
                         else (math.inf if math.isinf(a) else -math.inf) for _, a, b in rows])
    worse = np.flatnonzero(diff >= 0)
    last = worse[-1] if len(worse) else -1
    if last < len(T) - 1:
        # cheaper from inside the measured range on: do the fits say it lasts?
        later = ""
        if fit_mixer is not None and fit_baseline is not None:
            back = _first_cheaper(fit_baseline, fit_mixer, float(T[-1]))
            if back is not None:
                later = f"the fits predict the baseline cheaper again from T ≈ {_fmt_len(back)}"
        if last < 0:
            return Crossover("always", length=float(T[0]), note=later)
        d0, d1 = diff[last], diff[last + 1]
        x0, x1 = math.log2(T[last]), math.log2(T[last + 1])
        if math.isinf(d0) or math.isinf(d1):
            note = (f"the baseline fails from {_fmt_len(T[last + 1])}" if math.isinf(d1)
                    else f"the mixer fails at {_fmt_len(T[last])}")
            note = "; ".join(n for n in (note, later) if n)
            return Crossover("measured", length=float(T[last + 1]), lo=float(T[last]), hi=float(T[last + 1]),
                             note=note, bracketed=True)
        length = 2.0 ** (x0 + (x1 - x0) * d0 / (d0 - d1))
        return Crossover("measured", length=float(length), lo=float(T[last]), hi=float(T[last + 1]), note=later)
    # not cheaper at the longest common length: extrapolate from the fits
    if fit_mixer is None or fit_baseline is None:
        return Crossover("unknown", note=f"not cheaper up to T={_fmt_len(T[-1])}; too few points to extrapolate")
    if math.isinf(diff[-1]):
        return Crossover("none", note=f"fails at T={_fmt_len(T[-1])} where the baseline runs")
    start = float(T[-1])
    length = _first_cheaper(fit_mixer, fit_baseline, start) if start < CROSSOVER_CAP else None
    if length is None:
        return Crossover(
            "none",
            note=f"not within [{_fmt_len(T[0])}, {_fmt_len(T[-1])}] and the fits do not cross below "
            f"{format_length(CROSSOVER_CAP)} (k = {fit_mixer.k:.2f} vs {fit_baseline.k:.2f})",
            capped=True,
        )
    n = min(len(fit_mixer.boot), len(fit_baseline.boot))
    boots = [_first_cheaper(fit_mixer.boot[i], fit_baseline.boot[i], start) for i in range(n)]
    if not n:
        return Crossover("extrapolated", length=length)
    # replicates whose fits never cross count as infinitely far (order statistics, no interpolation)
    ranked = np.sort([x if x is not None else math.inf for x in boots])
    lo, hi = ranked[int(0.025 * (n - 1))], ranked[int(math.ceil(0.975 * (n - 1)))]
    return Crossover("extrapolated", length=length, lo=float(lo), hi=float(hi))

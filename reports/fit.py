"""Scaling exponents with bootstrap intervals, local slopes and crossover lengths (numpy only).

Model (``docs/RECORDS.md`` / PROFILING.md 5.7): with at least :data:`MIN_POINTS_OFFSET` lengths the
cost is fitted as ``y = a + b * T**k`` (``a >= 0`` absorbs fixed overhead such as kernel launches
or the empty-call cost, so ``k`` describes the asymptotic growth); with fewer lengths ``a`` cannot
be told apart from curvature and the fit is the plain log-log slope (``y = b * T**k``).
Least squares is on *relative* residuals, so a 16k cell does not outweigh a 512 cell a
thousand-fold. ``k`` is found on a grid (0.01 steps over [0, 4], refined to 2e-4) with ``a`` and
``b`` solved in closed form at each ``k``: no optimiser, no starting point, no scipy.

Intervals: 95% percentile bootstrap. When raw timing samples are stored, each length's median is
recomputed from its samples resampled with replacement (what varies between repetitions); when
they are not (memory is one reading per cell), residuals of the fit are resampled on the log
scale. OOM, timeout and error cells are censored data: never fitted, only reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "Fit",
    "Crossover",
    "fit_scaling",
    "local_slopes",
    "find_crossover",
    "declared_class",
    "exponent_verdict",
    "FLAG_THRESHOLD",
    "MIN_POINTS_OFFSET",
]

MIN_POINTS_OFFSET = 5  # lengths needed before the a + b*T^k model is used
_K_GRID = np.linspace(0.0, 4.0, 401)
_MAX_EXTRAPOLATION = 2.0**40  # crossovers beyond ~1e12 tokens are reported as "none"


@dataclass
class Fit:
    """``y ~ a + b * T**k`` with a 95% bootstrap interval for ``k``."""

    k: float
    k_lo: float
    k_hi: float
    a: float
    b: float
    model: str  # "a+bT^k" or "power"
    lengths: list[int]
    boot: np.ndarray  # (n_boot, 3): k, a, b of each bootstrap replicate

    def predict(self, T: float | np.ndarray) -> np.ndarray:
        return self.a + self.b * np.power(np.asarray(T, dtype=float), self.k)

    @property
    def interval(self) -> str:
        return f"{self.k:.2f} [{self.k_lo:.2f}, {self.k_hi:.2f}]"


def _solve_ab(T: np.ndarray, y: np.ndarray, ks: np.ndarray, offset: bool) -> tuple[np.ndarray, ...]:
    """For every k in ``ks``: the (a >= 0, b > 0) minimising sum(((a + b T^k) / y - 1)^2).

    Returns (sse, a, b), each of shape (..., K) (sse = inf where b <= 0). Stacked problems:
    y of shape (R, n) with ks of shape (K,) or (R, K) give (R, K) results.
    """
    u = 1.0 / y  # (..., n)
    v = np.power(T[..., None, :], ks[..., :, None]) * u[..., None, :]  # (..., K, n)
    su = np.sum(u * u, axis=-1)[..., None]  # (..., 1)
    s1 = np.sum(u, axis=-1)[..., None]
    suv = np.sum(v * u[..., None, :], axis=-1)  # (..., K)
    svv = np.sum(v * v, axis=-1)
    sv = np.sum(v, axis=-1)
    # b alone (a = 0): the only model without an offset, and the fallback when a would be < 0
    b0 = sv / svv
    sse0 = np.sum((b0[..., None] * v - 1.0) ** 2, axis=-1)
    if not offset:
        return sse0, np.zeros_like(b0), b0
    det = su * svv - suv**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (s1 * svv - suv * sv) / det
        b = (su * sv - suv * s1) / det
    ok = (det > 1e-300) & (a >= 0) & (b > 0)
    a = np.where(ok, a, 0.0)
    b = np.where(ok, b, b0)
    sse = np.sum((a[..., None] * u[..., None, :] + b[..., None] * v - 1.0) ** 2, axis=-1)
    sse = np.where(b > 0, sse, np.inf)
    return sse, a, b


def _best(T: np.ndarray, y: np.ndarray, offset: bool) -> np.ndarray:
    """(..., 3) best (k, a, b) on the grid, refined once around the minimum."""
    sse, a, b = _solve_ab(T, y, _K_GRID, offset)
    i = np.argmin(sse, axis=-1)  # (...)
    k0 = _K_GRID[i]
    ks = np.clip(np.asarray(k0)[..., None] + np.linspace(-0.012, 0.012, 121), 0.0, 4.0)  # (..., F)
    sse, a, b = _solve_ab(T, y, ks, offset)
    j = np.argmin(sse, axis=-1)[..., None]  # (..., 1)
    pick = [np.take_along_axis(m, j, axis=-1)[..., 0] for m in (ks, a, b)]
    return np.stack(pick, axis=-1)  # (..., 3)


def fit_scaling(
    lengths: Sequence[float],
    values: Sequence[float],
    samples: Sequence[Sequence[float] | None] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Fit | None:
    """Fit ``values ~ a + b * lengths**k`` (or the power law below :data:`MIN_POINTS_OFFSET` points).

    ``values`` are positive medians; ``samples[i]`` the raw repetitions behind ``values[i]`` (or
    None). Returns None with fewer than two distinct positive points.
    """
    T = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(T) & np.isfinite(y) & (T > 0) & (y > 0)
    order = np.argsort(T[keep], kind="stable")
    idx = np.flatnonzero(keep)[order]
    T, y = T[idx], y[idx]
    if len(np.unique(T)) < 2:
        return None
    offset = len(T) >= MIN_POINTS_OFFSET
    k, a, b = _best(T, y, offset)
    rng = np.random.default_rng(seed)

    raw = None
    if samples is not None:
        raw = [np.asarray(samples[i], dtype=float) if samples[i] is not None else None for i in idx]
        if any(s is None or len(s) < 3 or not np.all(s > 0) for s in raw):
            raw = None
    if raw is not None:
        boot_y = np.stack(
            [np.median(rng.choice(s, size=(n_boot, len(s)), replace=True), axis=1) for s in raw], axis=1
        )  # (n_boot, n)
    else:
        fitted = a + b * T**k
        resid = np.log(y) - np.log(fitted)
        resid = resid - resid.mean()
        draws = rng.integers(0, len(T), size=(n_boot, len(T)))
        boot_y = fitted[None, :] * np.exp(resid[draws])  # (n_boot, n)
    boot = _best(T, boot_y, offset)  # (n_boot, 3)
    lo, hi = np.percentile(boot[:, 0], [2.5, 97.5])
    return Fit(
        k=float(k),
        k_lo=float(min(lo, k)),
        k_hi=float(max(hi, k)),
        a=float(a),
        b=float(b),
        model="a+bT^k" if offset else "power",
        lengths=[int(t) for t in T],
        boot=boot,
    )


def local_slopes(lengths: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """log(y2/y1) / log(T2/T1) between consecutive lengths, placed at their geometric midpoint."""
    T = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = (T > 0) & (y > 0) & np.isfinite(y)
    T, y = T[keep], y[keep]
    order = np.argsort(T)
    T, y = T[order], y[order]
    if len(T) < 2:
        return np.empty(0), np.empty(0)
    mid = np.sqrt(T[1:] * T[:-1])
    slope = np.log(y[1:] / y[:-1]) / np.log(T[1:] / T[:-1])
    return mid, slope


FLAG_THRESHOLD = 0.3  # |fitted - declared exponent| above this is a disagreement (PROFILING.md 5.7)


def exponent_verdict(fit: Fit, declared: float | None) -> str | None:
    """The one flag rule for a fitted exponent against the declared one (records and report):
    ``"flagged"`` when |k - declared| > FLAG_THRESHOLD and the interval excludes the declared
    exponent; ``"inconclusive"`` when the gap is as large but the interval still holds it;
    None when they agree (or nothing is declared)."""
    if declared is None or abs(fit.k - declared) <= FLAG_THRESHOLD:
        return None
    return "inconclusive" if fit.k_lo <= declared <= fit.k_hi else "flagged"


_CLASSES = {1.0: "O(T)", 1.05: "O(T log T)", 2.0: "O(T^2)"}


def declared_class(exponent: float | None) -> str:
    """'O(T)' / 'O(T log T)' / 'O(T^2)' for the spec's exponent (1, 1.05, 2), else 'T^k'."""
    if exponent is None or (isinstance(exponent, float) and math.isnan(exponent)):
        return "?"
    for value, name in _CLASSES.items():
        if abs(exponent - value) < 1e-6:
            return name
    return f"O(T^{exponent:g})"


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
                hi = "∞" if math.isinf(self.hi) else _fmt_len(self.hi)
                ci = f" [{_fmt_len(self.lo)}, {hi}]"
            return f"T ≈ {_fmt_len(self.length)}{ci} (extrapolated from the fits)" + _note(self.note)
        if self.kind == "none":
            return "no crossover" + _note(self.note)
        return "unknown" + _note(self.note)


def _note(note: str) -> str:
    return f"; {note}" if note else ""


def _fmt_len(T: float | None) -> str:
    if T is None:
        return "?"
    for unit, scale in (("M", 2**20), ("k", 2**10)):
        if T >= scale:
            value = T / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{T:.0f}"


def _first_cheaper(fit_a: Fit | np.ndarray, fit_b: Fit | np.ndarray, start: float) -> float | None:
    """Smallest T >= start from which a + bT^k of A stays below B's (None if never up to 2^40)."""
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
    length = _first_cheaper(fit_mixer, fit_baseline, start)
    if length is None:
        return Crossover(
            "none",
            note=f"not within [{_fmt_len(T[0])}, {_fmt_len(T[-1])}], and the fits do not cross "
            f"(k = {fit_mixer.k:.2f} vs {fit_baseline.k:.2f})",
        )
    n = min(len(fit_mixer.boot), len(fit_baseline.boot))
    boots = [_first_cheaper(fit_mixer.boot[i], fit_baseline.boot[i], start) for i in range(n)]
    if not n:
        return Crossover("extrapolated", length=length)
    # replicates whose fits never cross count as infinitely far (order statistics, no interpolation)
    ranked = np.sort([x if x is not None else math.inf for x in boots])
    lo, hi = ranked[int(0.025 * (n - 1))], ranked[int(math.ceil(0.975 * (n - 1)))]
    return Crossover("extrapolated", length=length, lo=float(lo), hi=float(hi))

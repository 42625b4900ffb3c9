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

The rules every exponent and crossover follows, here and in the profiler's fit records:

* no fit below :data:`MIN_FIT_LENGTHS` distinct lengths (two points always give "a slope");
* :func:`fit_series` fits only clean timings (:func:`reports.cells.is_clean`) when there are
  enough of them, and says which lengths it used and which it left out;
* :func:`judge_exponent` flags an exponent against its declared class only when the data behind
  it is clean, the gap exceeds :data:`FLAG_THRESHOLD` and the interval excludes the declared value,
  and, for memory on CPU, the live-tensor peak of the same cells is beyond the threshold too (else
  "inconclusive": the resident peak carries the allocator's page noise, ~2 MB, over fixed parts);
* crossovers are searched up to :data:`CROSSOVER_CAP` tokens; beyond it: "none below 1M tokens".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from reports.formats import format_length

__all__ = [
    "Fit",
    "Crossover",
    "SeriesFit",
    "Verdict",
    "fit_scaling",
    "fit_series",
    "judge_exponent",
    "local_slopes",
    "find_crossover",
    "declared_class",
    "MIN_POINTS_OFFSET",
    "MIN_FIT_LENGTHS",
    "FLAG_THRESHOLD",
    "CROSSOVER_CAP",
]

MIN_POINTS_OFFSET = 5  # lengths needed before the a + b*T^k model is used
MIN_FIT_LENGTHS = 3  # distinct lengths a fit needs: two points are a slope, not an exponent with an interval
FLAG_THRESHOLD = 0.3  # |fitted - declared exponent| above this may be flagged (PROFILING.md 5.7)
CROSSOVER_CAP = 2.0**20  # crossovers are searched up to 1M tokens; beyond: "none below 1M tokens"
_K_GRID = np.linspace(0.0, 4.0, 401)


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
    min_lengths: int = MIN_FIT_LENGTHS,
) -> Fit | None:
    """Fit ``values ~ a + b * lengths**k`` (or the power law below :data:`MIN_POINTS_OFFSET` points).

    ``values`` are positive medians; ``samples[i]`` the raw repetitions behind ``values[i]`` (or
    None). Returns None with fewer than ``min_lengths`` (:data:`MIN_FIT_LENGTHS`) distinct
    positive points.
    """
    T = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(T) & np.isfinite(y) & (T > 0) & (y > 0)
    order = np.argsort(T[keep], kind="stable")
    idx = np.flatnonzero(keep)[order]
    T, y = T[idx], y[idx]
    if len(np.unique(T)) < max(min_lengths, 2):
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


_CLASSES = {1.0: "O(T)", 1.05: "O(T log T)", 2.0: "O(T^2)"}


def declared_class(exponent: float | None) -> str:
    """'O(T)' / 'O(T log T)' / 'O(T^2)' for the spec's exponent (1, 1.05, 2), else 'T^k'."""
    if exponent is None or (isinstance(exponent, float) and math.isnan(exponent)):
        return "?"
    for value, name in _CLASSES.items():
        if abs(exponent - value) < 1e-6:
            return name
    return f"O(T^{exponent:g})"


# --- the series rules: which points are fitted, and what an exponent may claim -------------------
@dataclass
class SeriesFit:
    """The fit of one series and what it rests on.

    ``fit`` is None with fewer than :data:`MIN_FIT_LENGTHS` usable lengths (``reason`` says so);
    ``clean`` is True when every point fitted was a clean timing; ``excluded`` lists the lengths
    left out because their timing was not clean (noisy, contended, or beside busy neighbours).
    ``short`` lists the lengths left out as shorter than the spec's ``class_from`` (the mixer runs
    another algorithm there); ``in_regime`` is False when too few lengths remained without them, so
    they were fitted and no verdict may rest on the fit. ``check`` is the fit of a second reading
    of the same cells over the same lengths (memory on CPU: the live-tensor peak beside the
    resident one), None without one: a ⚠ needs it to disagree with the class too.
    """

    fit: Fit | None
    clean: bool
    used: list[int]
    excluded: list[int]
    reason: str = ""
    short: list[int] = field(default_factory=list)
    in_regime: bool = True
    check: Fit | None = None

    @property
    def judgeable(self) -> bool:
        """Clean timings in the class's regime: a verdict (and an extrapolation) may rest on it."""
        return self.clean and self.in_regime


def fit_series(
    lengths: Sequence[float],
    values: Sequence[float],
    clean: Sequence[bool] | None = None,
    samples: Sequence[Sequence[float] | None] | None = None,
    n_boot: int = 200,
    class_from: Sequence[float | None] | None = None,
    check: Sequence[float | None] | None = None,
) -> SeriesFit:
    """Fit a series on its clean points when there are :data:`MIN_FIT_LENGTHS` of them, else on
    every point (then ``clean=False``: no verdict may rest on it), else not at all.

    ``values[i]`` is the positive cost at ``lengths[i]`` (NaN / None for cells without a number);
    ``clean[i]`` whether that point is a clean timing (None: all clean, e.g. memory);
    ``class_from[i]`` the spec's shortest length its classes describe (None: every length). Points
    shorter than that are left out first, when :data:`MIN_FIT_LENGTHS` lengths remain (``short``);
    otherwise they stay and the fit is not in the class's regime (``in_regime=False``).
    ``check[i]``: a second reading of the same cost (memory on CPU: the live-tensor peak, free of
    the allocator's page noise that the resident peak carries); fitted over the same lengths
    when every one of them has it (``SeriesFit.check``), for :func:`judge_exponent`.
    """
    n = len(lengths)
    clean = [True] * n if clean is None else [bool(c) for c in clean]
    usable = [i for i in range(n) if values[i] is not None and math.isfinite(values[i]) and values[i] > 0]
    below = [class_from is not None and not _missing(class_from[i]) and lengths[i] < float(class_from[i])
             for i in range(n)]
    short = sorted({int(lengths[i]) for i in usable if below[i]})
    in_regime = True
    if short and len({lengths[i] for i in usable if not below[i]}) >= MIN_FIT_LENGTHS:
        usable = [i for i in usable if not below[i]]
    elif short:
        short, in_regime = [], False
    series = _fit_usable(lengths, values, clean, samples, n_boot, usable)
    series.short, series.in_regime = short, in_regime
    if check is not None and series.fit is not None:
        at = {float(lengths[i]): check[i] for i in usable}
        second = [at.get(float(T)) for T in series.fit.lengths]
        if all(not _missing(v) and math.isfinite(v) and v > 0 for v in second):
            series.check = fit_scaling(series.fit.lengths, second, n_boot=n_boot)
    return series


def _missing(v: Any) -> bool:
    """None or NaN: a field a record (or a table cell) does not have."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fit_usable(lengths, values, clean, samples, n_boot, usable: list[int]) -> SeriesFit:
    """:func:`fit_series` over the ``usable`` points: the clean ones when enough, else all."""
    good = [i for i in usable if clean[i]]
    excluded = sorted({int(lengths[i]) for i in usable if not clean[i]})

    def run(idx: list[int]) -> Fit | None:
        pts = samples and [samples[i] for i in idx]
        return fit_scaling([lengths[i] for i in idx], [values[i] for i in idx], pts or None, n_boot=n_boot)

    if len({lengths[i] for i in good}) >= MIN_FIT_LENGTHS:
        fit = run(good)
        return SeriesFit(fit, True, fit.lengths if fit else [], excluded)
    n_all = len({lengths[i] for i in usable})
    if n_all >= MIN_FIT_LENGTHS:
        fit = run(usable)
        return SeriesFit(fit, False, fit.lengths if fit else [], [])
    return SeriesFit(None, not excluded, sorted({int(lengths[i]) for i in usable}), excluded,
                     reason=f"too few lengths ({n_all} of {MIN_FIT_LENGTHS} needed)")


@dataclass
class Verdict:
    """What an exponent may say against its declared class.

    ``status``: ``agrees``, ``flagged`` (clean data, |k - declared| > :data:`FLAG_THRESHOLD` and
    the interval excludes the declared exponent), ``inconclusive`` (as large a gap, but the
    interval holds the declared exponent), ``noisy`` (the gap rests on timings that are
    not clean), ``unfitted`` (too few lengths) or ``undeclared``.
    """

    status: str
    text: str

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"


def judge_exponent(series: SeriesFit, declared: float | None) -> Verdict:
    """The verdict on one fitted exponent (the only place a ⚠ against a class is decided)."""
    fit = series.fit
    if fit is None:
        return Verdict("unfitted", series.reason or "too few lengths")
    mark = "" if series.judgeable else "~"
    if _missing(declared):
        return Verdict("undeclared", mark + fit.interval)
    gap = fit.k - declared
    if abs(gap) <= FLAG_THRESHOLD:
        note = "" if series.clean else " (data not clean)"
        note += "" if series.in_regime else " (lengths below the class's regime included)"
        return Verdict("agrees", mark + fit.interval + note)
    if not series.clean:
        return Verdict("noisy", f"~{fit.interval} inconclusive (data not clean)")
    if not series.in_regime:
        return Verdict("inconclusive", f"~{fit.interval} inconclusive (lengths below the class's regime)")
    if fit.k_lo <= declared <= fit.k_hi:
        return Verdict("inconclusive", f"{fit.interval} (inconclusive)")
    check = series.check  # the same rule on the second reading: both must call the class wrong
    if check is not None and abs(check.k - declared) <= FLAG_THRESHOLD:
        return Verdict("inconclusive", f"{fit.interval} inconclusive (the live-tensor peak fits {check.k:.2f}, "
                                       f"within {FLAG_THRESHOLD:g} of {declared_class(declared)})")
    if check is not None and check.k_lo <= declared <= check.k_hi:
        return Verdict("inconclusive", f"{fit.interval} inconclusive (the live-tensor peak fits {check.interval}, "
                                       f"which holds {declared_class(declared)})")
    return Verdict("flagged", f"{fit.interval}: {gap:+.2f} vs {declared_class(declared)}")



def __getattr__(name: str):
    """``reports.fit.Crossover`` / ``find_crossover``: moved to :mod:`reports.crossover`, kept as aliases."""
    if name in ("Crossover", "find_crossover"):
        from reports import crossover

        return getattr(crossover, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

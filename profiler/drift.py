"""The host's drift during an interleaved pass, read from the cells' own samples, and taken out.

On a shared VM the whole machine slows down and speeds up by 10-40% over seconds (other tenants of
the host; nothing inside the VM sees it). In an interleaved pass (:mod:`profiler.interleave`) every
cell is sampled throughout the same window, so such a spell shows up in *all* cells at once: measured
on the 2-core VM, a step of +25-30% that held for the rest of a pass in all 30 cells then active. A
cell that left the rotation before the spell and one that stayed through it would otherwise disagree
by that much, and the spell's samples widen every cell's spread (44 of 48 cells flagged noisy in one
quiet sweep).

Model: a sample of cell i taken at time t is ``level_i * speed(t) * noise``. ``speed`` is estimated at
each sample from the samples of the *other* cells taken nearest in time (at most :data:`NEIGHBOURS`,
within :data:`WINDOW_S`): a weighted mean of their log deviation from their own levels, the nearest
counting most (weight ``exp(-rank / RANK_SCALE)``: the host moves within 100 ms, so the samples
just before and after say most), made robust by Huber's rule (a deviation beyond
:data:`HUBER_K` robust standard deviations of the neighbours counts as if it were that far: one
neighbour's own hiccup moves the estimate by little). Leaving the cell out means a cell can never
explain away its own variation; a sample with fewer than :data:`MIN_NEIGHBOURS` such neighbours is
not corrected. Levels and speeds are refined a few times (each level is the median of the cell's
corrected samples). Speeds are normalised to the pass's median, so a corrected sample is the time
at the machine's typical speed during the pass, not at its best. The raw samples are kept beside the
corrected ones.

Measured on two passes of main.sh's 200 cells (2-core VM, one thread, 2026-12-02), against the
plain median of the 8 nearest: cells whose corrected IQR/median exceeded 10% 13.5% -> 8.5% and
18% -> 13%; median corrected IQR/median 6.1 -> 5.7% and 6.9 -> 6.1% (raw: 13-16%).

*Sensitivity.* Cells do not all follow the host alike: on the 2-core VM an FFT (fnet) slowed by
1.6-1.8x the factor its neighbours read, a matmul-heavy step by less. Dividing every cell by the
same factor leaves such a cell's spells in its spread (fnet was most of the cells still flagged
noisy). So each cell's samples are divided by ``factor ** b`` (:func:`sensitivity`): ``b`` is the
least-squares slope of the cell's log samples on the log factors, drawn towards 1 by a normal prior
of standard deviation :data:`PRIOR_SD` (few samples, or factors that hardly moved, leave it near 1:
a cell cannot fit away its own noise). Replayed on five recorded passes (main.sh's 200 cells and
four 48-cell sweeps of bench_contention, 2-core VM, 2026-12-03), cells still noisy after the
correction: 31 -> 20 in all (prior sd 0.1: 22, 0.2: 20, 0.3: 21, 0.5: 27); the loaded-vs-quiet
agreement of ratios to softmax unchanged (mean |log difference| 0.053 -> 0.051 and 0.041 -> 0.040).

No torch here (numpy only).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["drift_factors", "sensitivity", "PRIOR_SD", "NEIGHBOURS", "WINDOW_S", "MIN_NEIGHBOURS", "RANK_SCALE", "HUBER_K"]

NEIGHBOURS = 8  # other cells' samples nearest in time that estimate the speed at a sample
WINDOW_S = 2.0  # farther than this is not "the same moment"
MIN_NEIGHBOURS = 3
RANK_SCALE = 2.0  # the k-th nearest neighbour weighs exp(-k / RANK_SCALE) (k = 0 for the nearest)
HUBER_K = 1.5  # a neighbour's deviation counts at most this many robust standard deviations
ITERATIONS = 3
_HUBER_STEPS = 5
PRIOR_SD = 0.2  # a cell's sensitivity to the host's drift: normal prior around 1, this wide
MIN_FIT = 5  # samples a sensitivity is fitted from at least (fewer: 1)
SENSITIVITY_STEPS = 3
_SCALE_FLOOR = 1e-3  # log units: neighbours that agree exactly still have a scale


def _neighbours(owner, when):
    """(index matrix, valid mask): for each sample, the nearest samples of other cells (nearest
    first), at most NEIGHBOURS, within WINDOW_S; rows with fewer than MIN_NEIGHBOURS are empty."""
    import numpy as np

    n = len(owner)
    order = np.argsort(when, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    span = 4 * NEIGHBOURS  # candidates on each side in time order
    offsets = np.arange(-span, span + 1)
    pos = rank[:, None] + offsets[None, :]  # (n, 2*span+1) positions in time order
    inside = (pos >= 0) & (pos < n)
    cand = order[np.clip(pos, 0, n - 1)]  # (n, 2*span+1) sample indices
    gap = np.abs(when[cand] - when[:, None])
    gap[~inside | (owner[cand] == owner[:, None])] = np.inf
    pick = np.argsort(gap, axis=1, kind="stable")[:, :NEIGHBOURS]  # (n, NEIGHBOURS)
    idx = np.take_along_axis(cand, pick, axis=1)
    ok = np.take_along_axis(gap, pick, axis=1) <= WINDOW_S
    # a row whose candidates ran out (a cell alone for a while): the exact search over every sample
    short = ok.sum(axis=1) < NEIGHBOURS
    for s in np.flatnonzero(short):
        g = np.abs(when - when[s])
        g[owner == owner[s]] = np.inf
        near = np.argsort(g, kind="stable")[:NEIGHBOURS]
        k = len(near)
        idx[s, :k] = near
        ok[s, :] = False
        ok[s, :k] = g[near] <= WINDOW_S
    ok[ok.sum(axis=1) < MIN_NEIGHBOURS] = False
    return idx, ok


def _huber_rows(values, weights):
    """Per row, the Huber location of ``values`` under ``weights`` (0 where not a neighbour); NaN
    for a row without weight."""
    import numpy as np

    has = weights.sum(axis=1) > 0
    v = np.where(weights > 0, values, np.nan)
    v[~has] = 0.0  # a row without neighbours: a finite placeholder, answered NaN below
    with np.errstate(all="ignore"):
        loc = np.nanmedian(v, axis=1)
        scale = np.maximum(1.4826 * np.nanmedian(np.abs(v - loc[:, None]), axis=1), _SCALE_FLOOR)
        for _ in range(_HUBER_STEPS):
            r = np.abs(values - loc[:, None]) / (HUBER_K * scale[:, None])
            w = weights * np.minimum(1.0, 1.0 / np.maximum(r, 1e-12))
            total = w.sum(axis=1)
            loc = np.where(total > 0, (w * np.nan_to_num(values)).sum(axis=1) / np.where(total > 0, total, 1.0), loc)
    return np.where(has, loc, np.nan)


def drift_factors(marks: Sequence[Sequence[tuple[float, float]]]) -> list[list[float]]:
    """``marks[i]``: cell i's samples as (midpoint time in seconds, seconds). Returns, per cell and
    sample, the factor the machine's speed added (divide the sample by it); 1.0 where it cannot be
    told (a cell alone, a sample without enough neighbours)."""
    import numpy as np

    owner = np.array([i for i, cell in enumerate(marks) for _ in cell], dtype=int)
    if len(owner) == 0 or len(set(owner.tolist())) < 2:
        return [[1.0] * len(cell) for cell in marks]
    when = np.array([m[0] for cell in marks for m in cell], dtype=float)
    value = np.log(np.maximum(np.array([m[1] for cell in marks for m in cell], dtype=float), 1e-12))
    idx, ok = _neighbours(owner, when)
    weights = np.where(ok, np.exp(-np.arange(NEIGHBOURS) / RANK_SCALE)[None, :], 0.0)  # nearest first
    speed = np.zeros(len(owner))  # log factor per sample
    for _ in range(ITERATIONS):
        level = np.zeros(len(marks))
        for i in range(len(marks)):
            mine = owner == i
            if mine.any():
                level[i] = float(np.median(value[mine] - speed[mine]))
        deviation = value - level[owner]
        new = _huber_rows(deviation[idx], weights)
        told = ~np.isnan(new)
        if told.any():
            new[told] -= float(np.median(new[told]))  # relative to the pass's typical speed
        speed = np.where(told, new, 0.0)
    factors = np.exp(speed)
    out, k = [], 0
    for cell in marks:
        out.append([float(f) for f in factors[k:k + len(cell)]])
        k += len(cell)
    return out


def sensitivity(seconds: Sequence[float], factors: Sequence[float]) -> float:
    """How strongly one cell follows the host's drift: ``b`` in ``sample = level * factor**b * noise``
    (divide a sample by ``factor ** b``). The posterior mean under a normal prior ``N(1, PRIOR_SD²)``,
    the noise variance read from the residuals at the previous estimate (from b = 1, a few steps);
    1.0 with fewer than :data:`MIN_FIT` samples."""
    import numpy as np

    if len(seconds) != len(factors):
        raise ValueError(f"sensitivity: expected one factor per sample, got {len(factors)} for {len(seconds)}")
    if len(seconds) < MIN_FIT:
        return 1.0
    y = np.log(np.maximum(np.asarray(seconds, dtype=float), 1e-12))
    x = np.log(np.asarray(factors, dtype=float))
    xc, yc = x - x.mean(), y - y.mean()
    b = 1.0
    for _ in range(SENSITIVITY_STEPS):  # the noise read at the current b (at b = 1 it holds the misfit too)
        r = y - b * x
        noise = max(float(np.var(r)), 1e-6)
        prior = noise / PRIOR_SD ** 2  # the prior's weight, in units of samples x factor variance
        b = float((xc @ yc + prior) / (xc @ xc + prior))
    return b

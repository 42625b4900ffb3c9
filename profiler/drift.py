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
within :data:`WINDOW_S`): the median of their log deviation from their own levels. Leaving the cell
out means a cell can never explain away its own variation; a sample with fewer than
:data:`MIN_NEIGHBOURS` such neighbours is not corrected. Levels and speeds are refined a few times
(each level is the median of the cell's corrected samples). Speeds are normalised to the pass's
median, so a corrected sample is the time at the machine's typical speed during the pass, not at its
best. The raw samples are kept beside the corrected ones.

No torch here (numpy only).
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["drift_factors", "NEIGHBOURS", "WINDOW_S", "MIN_NEIGHBOURS"]

NEIGHBOURS = 8  # other cells' samples nearest in time that estimate the speed at a sample
WINDOW_S = 2.0  # farther than this is not "the same moment"
MIN_NEIGHBOURS = 3
ITERATIONS = 3


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
    # each sample's neighbours: the nearest samples of other cells within the window
    neighbours: list[np.ndarray] = []
    for s in range(len(owner)):
        gap = np.abs(when - when[s])
        gap[owner == owner[s]] = np.inf
        near = np.argsort(gap, kind="stable")[:NEIGHBOURS]
        near = near[gap[near] <= WINDOW_S]
        neighbours.append(near if len(near) >= MIN_NEIGHBOURS else np.empty(0, dtype=int))
    speed = np.zeros(len(owner))  # log factor per sample
    for _ in range(ITERATIONS):
        level = np.zeros(len(marks))
        for i in range(len(marks)):
            mine = owner == i
            if mine.any():
                level[i] = float(np.median(value[mine] - speed[mine]))
        deviation = value - level[owner]
        new = np.array([float(np.median(deviation[n])) if len(n) else math.nan for n in neighbours])
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

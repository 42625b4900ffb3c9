"""The host's drift in an interleaved pass (profiler/drift.py): a slow spell seen by every cell at
once is taken out of each cell's samples; a cell's own variation never is."""

import math
import random

import pytest

from profiler.drift import MIN_FIT, PRIOR_SD, drift_factors, sensitivity


def _pass(levels, speed, rotations=20, noise=0.0, seed=0):
    """Cells sampled in turn (one sample each per rotation, 0.1 s apart): marks per cell."""
    rng = random.Random(seed)
    marks = [[] for _ in levels]
    t = 0.0
    for r in range(rotations):
        for i, level in enumerate(levels):
            t += 0.1
            marks[i].append((t, level * speed(t) * math.exp(rng.gauss(0.0, noise))))
    return marks


def _corrected(marks):
    factors = drift_factors(marks)
    return [[s / f for (_, s), f in zip(cell, fs)] for cell, fs in zip(marks, factors)]


def test_a_spell_every_cell_sees_is_taken_out():
    levels = [1.0, 2.0, 0.5, 3.0, 1.5]
    marks = _pass(levels, lambda t: 1.3 if t > 5.0 else 1.0)  # +30% for the second half of the pass
    for cell, fixed in zip(marks, _corrected(marks)):
        # away from the step's moment (the 8 neighbours straddle it there) the step is gone
        away = [c for (t, _), c in zip(cell, fixed) if abs(t - 5.0) > 0.5]
        assert max(away) / min(away) == pytest.approx(1.0, abs=1e-9)
        assert max(s for _, s in cell) / min(s for _, s in cell) == pytest.approx(1.3)


def test_a_cell_that_left_early_is_put_on_the_others_scale():
    """A cell sampled only before the spell and one sampled through it: their ratio is the levels'."""
    levels = [1.0, 2.0, 4.0, 1.0]
    marks = _pass(levels, lambda t: 1.0 if t < 2.0 else 1.5, rotations=30)
    marks[3] = marks[3][:4]  # the last cell left the rotation at t = 1.6 s, before the spell
    cells = _corrected(marks)
    med = [sorted(c)[len(c) // 2] for c in cells]
    assert med[0] / med[3] == pytest.approx(1.0, rel=1e-9)
    raw0 = sorted(s for _, s in marks[0])[len(marks[0]) // 2]
    assert raw0 / marks[3][0][1] == pytest.approx(1.5)  # uncorrected, the spell was in the ratio


def test_a_cell_of_its_own_keeps_its_variation():
    """Only this cell slows down: the others cannot explain it, so it is not corrected away; as one
    neighbour among eight it moves the others' correction by next to nothing (Huber's rule)."""
    levels = [1.0, 2.0, 0.5, 3.0]
    marks = _pass(levels, lambda t: 1.0)
    marks[0] = [(t, s * (1.5 if k % 2 else 1.0)) for k, (t, s) in enumerate(marks[0])]
    cells = _corrected(marks)
    assert max(cells[0]) / min(cells[0]) == pytest.approx(1.5, rel=1e-4)
    for cell in cells[1:]:
        assert max(cell) / min(cell) == pytest.approx(1.0, abs=5e-3)


def test_a_quiet_pass_is_left_as_it_was_and_noise_is_not_amplified():
    levels = [1.0, 2.0, 0.5, 3.0, 1.5, 0.8]
    marks = _pass(levels, lambda t: 1.0, noise=0.03, seed=1)
    for cell, fs in zip(marks, drift_factors(marks)):
        assert all(abs(math.log(f)) < 0.05 for f in fs)  # a mean over 8 neighbours: well inside the noise


def test_nothing_to_compare_means_no_correction():
    assert drift_factors([]) == []
    assert drift_factors([[(0.1, 1.0), (0.2, 2.0)]]) == [[1.0, 1.0]]  # a cell alone
    far = [[(0.0, 1.0)], [(100.0, 5.0)], [(200.0, 3.0)], [(300.0, 2.0)]]  # no neighbour within the window
    assert drift_factors(far) == [[1.0]] * 4


def test_the_correction_is_relative_to_the_typical_speed_not_the_best():
    levels = [1.0, 2.0, 0.5, 3.0]
    marks = _pass(levels, lambda t: 0.8 if t < 1.0 else 1.0)  # a short fast spell at the start
    cells = _corrected(marks)
    for level, cell in zip(levels, cells):
        assert sorted(cell)[len(cell) // 2] == pytest.approx(level, rel=1e-9)  # the typical speed's time


def test_the_nearest_neighbours_say_most_and_the_fast_search_finds_them():
    """A short spell (one rotation of 5 cells, +40%) is mostly taken out of the samples inside it
    (the samples just before and after, outside it, weigh less than those inside), and the
    vectorised neighbour search agrees with the definition when a cell runs alone for a while."""
    levels = [1.0, 2.0, 0.5, 3.0, 1.5]
    marks = _pass(levels, lambda t: 1.4 if 3.0 < t <= 3.5 else 1.0)  # exactly one rotation slowed
    cells = _corrected(marks)
    inside = [c / s for cell, fixed in zip(marks, cells) for (t, s), c in zip(cell, fixed) if 3.05 < t < 3.45]
    assert len(inside) == 4 and max(inside) < 1 / 1.2 and sum(inside) / 4 < 1 / 1.25
    alone = [[(0.1 * k, 1.0) for k in range(60)], [(0.05, 2.0), (6.05, 2.0)], [(0.07, 3.0), (6.07, 3.0)],
             [(0.09, 1.0), (6.09, 1.0)]]  # cell 0 sampled alone between 0.1 s and 5.9 s
    assert drift_factors(alone) == [[1.0] * 60, [1.0] * 2, [1.0] * 2, [1.0] * 2]


def _iqr_share(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[(3 * n) // 4] - xs[n // 4]) / xs[n // 2]


def test_a_cell_that_follows_the_drift_more_than_the_others_is_corrected_by_its_own_exponent():
    """fnet on the VM: its samples moved 1.6x as far (in log) as the factor its neighbours read.
    The plain factor leaves that in its spread; the fitted exponent takes it out."""
    levels = [1.0, 2.0, 0.5, 3.0, 1.5, 0.8]
    speed = lambda t: math.exp(0.2 * math.sin(1.5 * t))  # the host's speed swinging +-20% every 4 s
    marks = _pass(levels, speed, rotations=20, noise=0.01)
    marks[0] = [(t, levels[0] * speed(t) ** 1.6 * s / (levels[0] * speed(t))) for t, s in marks[0]]  # cell 0: ^1.6
    factors = drift_factors(marks)
    plain = [s / f for (_, s), f in zip(marks[0], factors[0])]
    b = sensitivity([s for _, s in marks[0]], factors[0])
    assert 1.4 < b < 1.6  # the prior draws 1.6 towards 1 by little: the factors moved far, 20 samples
    fitted = [s / f ** b for (_, s), f in zip(marks[0], factors[0])]
    assert _iqr_share(plain) > 0.10 and _iqr_share(fitted) < 0.05
    for cell, fs in zip(marks[1:], factors[1:]):  # the others follow the drift as the factors say (cell 0,
        assert abs(sensitivity([s for _, s in cell], fs) - 1.0) < 0.15  # one of their 5 neighbours, moves them a little)


def test_a_cell_cannot_fit_away_its_own_noise():
    rng = random.Random(3)
    noise = [math.exp(rng.gauss(0.0, 0.15)) for _ in range(8)]
    assert sensitivity(noise, [1.0] * 8) == 1.0  # the factors did not move: nothing to fit
    unrelated = [math.exp(rng.gauss(0.0, 0.05)) for _ in range(8)]  # the host moved, this cell did not follow
    b = sensitivity(noise, unrelated)
    assert abs(b - 1.0) < 2 * PRIOR_SD  # a slope of 8 noisy points is held near 1 by the prior
    few = noise[: MIN_FIT - 1]
    assert sensitivity(few, [1.2, 0.8, 1.1, 0.9][: len(few)]) == 1.0


def test_sensitivity_needs_one_factor_per_sample():
    with pytest.raises(ValueError, match="one factor per sample, got 2 for 3"):
        sensitivity([1.0, 2.0, 3.0], [1.0, 1.0])

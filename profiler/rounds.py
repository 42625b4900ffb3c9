"""Rounds: each cell timed in ``k`` processes, interleaved with the other cells of its length.

Why: on a shared machine (a cloud VM above all) a whole process can run 1.5-2x slower than the
next one for seconds at a time, with nothing inside the VM to see (the host's other tenants share
its caches and memory bandwidth). Measured on the 2-core CI VM, one thread, the same skeinformer
forward (T = 2048) in six fresh processes: 30, 34, 35, 43, 34 and 37 ms, each within a few percent
of itself. A per-sample load probe cannot see that; repetition in fresh processes can.

What the sweep does with ``rounds = k > 1`` (:func:`profiler.sweep.run_sweep`): round 1 runs every
cell in full (fake pass, memory pass, timing), lengths in order; then the whole sweep runs ``k - 1``
more times *timing only* (``opts["timing_only"]``: build, first call, warm-up, timed calls). The
cells of one length stay together in every round, their order reversed every other round so no
cell always follows the same neighbour, and a cell's rounds are a whole sweep apart: the slow
spells seen here last up to a minute (a decode sweep: all three rounds of a cell slow when they
ran within the same minute). Each cell's record is written once, after its last round
(:func:`merge_rounds`); an interrupted sweep writes the rounds it has.

The estimate: the round with the lowest median among the rounds whose samples were not
contended, else among all (Chen & Revels 2016: timing noise is additive and positive, so the
least-disturbed process is the best estimate of the machine's own speed). A noisy round is not
passed over for a slower steady one: in a decode sweep here, a slow process was as often steady
(0.77 ms a token, IQR small) as a fast one was jittery (0.48 ms, IQR/median > 10%), and preferring
steady rounds made the per-token times worse, not better. The cell is noisy when its chosen round
is, and contended only when every round was. Every round's median is
kept (``time_rounds_s``), and the spread across rounds (``round_spread``, max / min - 1) is what the
reader needs to judge how stable the machine was.
"""

from __future__ import annotations

from typing import Any, Iterable

from profiler.cases import Cell
from profiler.contention import PROBE_FIELDS
from profiler.timing import summarise_samples

__all__ = ["length_groups", "round_order", "merge_rounds", "TIMING_FIELDS"]

# the fields a timing-only round reports that replace round 1's when that round is chosen
TIMING_FIELDS = PROBE_FIELDS + ("time_block", "warmup_calls", "warmup_s", "cpus")


def length_groups(cells: Iterable[Cell]) -> list[list[Cell]]:
    """Consecutive cells of one length (the plan puts lengths outermost), in plan order."""
    groups: list[list[Cell]] = []
    for cell in cells:
        if groups and groups[-1][0].T == cell.T:
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def round_order(cells: list[Cell], r: int) -> list[Cell]:
    """Round r's order (r = 1 is the first): the plan's order, reversed on even rounds."""
    return list(reversed(cells)) if r % 2 == 0 else list(cells)


def _median(result: dict[str, Any]) -> float | None:
    if result.get("status") != "ok" or not result.get("time_samples"):
        return None
    return summarise_samples(result["time_samples"])["time_median_s"]


def merge_rounds(first: dict[str, Any], more: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Round 1's result with the timing of the chosen round (see the module docstring).

    ``first``: the full measurement (status ok); ``more``: the timing-only rounds' results, any
    status (a failed round is kept as ``None`` in ``time_rounds_s`` and named in ``round_errors``).
    """
    results = [first, *more]
    medians = [_median(r) for r in results]
    ok = [i for i, m in enumerate(medians) if m is not None]
    merged = dict(first)
    merged["rounds"] = rounds
    merged["time_rounds_s"] = medians
    errors = [f"round {i + 1}: {r.get('status')}: {r.get('reason')}" for i, r in enumerate(results) if medians[i] is None]
    if errors:
        merged["round_errors"] = errors
    if not ok:
        return merged
    calm = [i for i in ok if not results[i].get("contended")]
    best = min(calm or ok, key=lambda i: medians[i])
    chosen = results[best]
    merged.update(summarise_samples(chosen["time_samples"]))
    merged.update({k: chosen[k] for k in TIMING_FIELDS if k in chosen})
    merged["time_round"] = best + 1
    lo, hi = min(medians[i] for i in ok), max(medians[i] for i in ok)
    merged["round_spread"] = (hi / lo - 1.0) if lo > 0 else None
    return merged

"""The report's complexity and crossover sections: fitted exponents against each spec's declared
class, and the length from which each mixer is cheaper than the baseline.

Every rule comes from :mod:`reports.fit` (which points are fitted, when a ⚠ is allowed, the
crossover cap) and :mod:`reports.cells` (what a clean timing is); this module only lays out
their answers. Timings that are noisy or contended are left out of fits and crossovers, and
each row says which lengths it used.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from reports.crossover import Crossover, find_crossover
from reports.doc import Doc, Flag, Frame, group_heading, lengths_text
from reports.fit import (
    CROSSOVER_CAP,
    FLAG_THRESHOLD,
    MIN_FIT_LENGTHS,
    MIN_POINTS_OFFSET,
    SeriesFit,
    declared_class,
    fit_series,
    judge_exponent,
)
from reports.formats import format_length
from reports.load import Profile
from reports.cells import mixer_of, resolve_baseline
from reports.metrics import MEMORY, MEMORY_CHECK, TIME, Metric, clean_mask, group_cells, is_oom

__all__ = ["complexity_section", "series_fits"]


def _declared_exponents(profiles: list[Profile], declared: dict[str, dict[str, float]] | None):
    """(label, scope, mode, metric) -> exponent from fit records; mixer -> {metric: exponent}."""
    from_fits: dict[tuple, float] = {}
    for profile in profiles:
        for _, row in profile.fits.iterrows():
            if pd.notna(row["declared"]):
                from_fits[(row["label"], row["scope"], row["mode"], row["metric"])] = float(row["declared"])
    return from_fits, declared or {}


def _clean_points(part: pd.DataFrame, metric: Metric) -> pd.Series:
    """Which cells are clean for this metric: timings must be, memory readings always are."""
    return clean_mask(part) if metric is TIME else pd.Series(True, index=part.index)


def series_fits(cells: pd.DataFrame) -> dict[tuple[str, str], SeriesFit]:
    """(label, metric) -> the series' fit for time (clean timings, raw samples) and memory."""
    out: dict[tuple[str, str], SeriesFit] = {}
    for label, part in cells.groupby("label", sort=True):
        for metric in (TIME, MEMORY):
            values = metric.values(part)
            samples = None
            if metric is TIME:
                samples = [s if isinstance(s, list) else None for s in part["time_samples"]]
            class_from = part["class_from"].tolist() if "class_from" in part else None
            check = None  # memory: the live-tensor peak cross-checks the resident one (CPU records; NaN: none)
            if metric is MEMORY and MEMORY_CHECK in part:
                check = pd.to_numeric(part[MEMORY_CHECK], errors="coerce").tolist()
            out[(label, metric.name)] = fit_series(
                part["T"].tolist(), [float(v) if pd.notna(v) else math.nan for v in values],
                _clean_points(part, metric).tolist(), samples, class_from=class_from, check=check)
    return out


def _metric_costs(cells: pd.DataFrame, label: str, metric: Metric) -> dict[int, float]:
    """T -> cost for the crossover: the metric where ok and clean, inf where the cell failed for
    lack of memory or time (the survivor is the cheaper one there); not-clean cells are absent."""
    part = cells[cells["label"] == label]
    values = metric.values(part)
    clean = _clean_points(part, metric)
    failed = is_oom(part) | (part["status"] == "timeout")
    out = {}
    for idx, row in part.iterrows():
        if pd.notna(values.loc[idx]) and clean.loc[idx]:
            out[int(row["T"])] = float(values.loc[idx])
        elif failed.loc[idx]:
            out[int(row["T"])] = math.inf
    return out


def _exponent_cell(series: SeriesFit, declared: float | None) -> Any:
    verdict = judge_exponent(series, declared)
    return Flag(verdict.text) if verdict.flagged else verdict.text


def _lengths_cell(fits: list[SeriesFit]) -> str:
    """The lengths behind the row's fits (time first, memory second when they differ)."""
    used = [sorted(f.used) if f.fit is not None else [] for f in fits]
    excluded = sorted({T for f in fits for T in f.excluded})
    text = lengths_text(used[0] or used[1])
    if used[0] and used[1] and used[0] != used[1]:
        text = f"time {lengths_text(used[0])}; memory {lengths_text(used[1])}"
    if any(f.fit is not None and not f.clean for f in fits):
        text += "; noisy or busy-machine timings included (too few clean lengths)"
    if excluded:
        text += "; left out (noisy or busy machine): " + ", ".join(format_length(T) for T in excluded)
    short = sorted({T for f in fits for T in f.short})
    if short:
        text += ("; left out (shorter than the spec's class_from: another algorithm there): "
                 + ", ".join(format_length(T) for T in short))
    if any(f.fit is not None and not f.in_regime for f in fits):
        text += "; includes lengths shorter than the spec's class_from (too few longer ones)"
    return text


def _cross_cell(cross: Crossover) -> Any:
    return Flag(cross.text) if cross.kind == "extrapolated" else cross.text


def _crossover(part: pd.DataFrame, label: str, base: str, metric: Metric, fits) -> Any:
    costs_a = _metric_costs(part, label, metric)
    costs_b = _metric_costs(part, base, metric)
    lengths = sorted(set(costs_a) | set(costs_b))
    fit_a, fit_b = fits[(label, metric.name)], fits[(base, metric.name)]
    # extrapolate only from fits on clean data in the class's regime
    fa = fit_a.fit if fit_a.judgeable else None
    fb = fit_b.fit if fit_b.judgeable else None
    cross = find_crossover(lengths, [costs_a.get(T) for T in lengths], [costs_b.get(T) for T in lengths], fa, fb)
    return _cross_cell(cross)


_INTRO = (
    "Exponent k of cost ≈ a + b·T^k over the lengths that produced a number (a absorbs fixed overhead; "
    f"with fewer than {MIN_POINTS_OFFSET} lengths a plain log-log slope), with a 95% bootstrap interval: "
    "timing repetitions resampled within each length, or fit residuals for memory. No exponent from "
    f"fewer than {MIN_FIT_LENGTHS} lengths. Failed cells (OOM, timeout) are left out, and so are lengths "
    "shorter than a mixer's declared class_from (another algorithm runs there: bigbird's full attention "
    f"for short sequences) when {MIN_FIT_LENGTHS} longer ones remain (else the exponent is not judged), and timings "
    "marked noisy (~) or taken on a busy machine (≈: contended, or beside busy neighbours) when enough clean lengths remain; otherwise the fit uses them, is "
    "shown with a leading ~ and never judged. ⚠ only on clean data, where |k − declared| > "
    f"{FLAG_THRESHOLD} and the interval excludes the declared exponent: the measured range is not yet "
    "asymptotic (overheads, caches) or the implementation does not scale as its class says; "
    "\"inconclusive\" where the gap is as large but the interval still holds the declared exponent, "
    "\"inconclusive (data not clean)\" where it rests on noisy or busy-machine timings. A memory exponent "
    "(the resident peak on CPU) is flagged only if the live-tensor peak of the same cells is too: the "
    "resident peak carries the allocator's page noise (~2 MB), which over a large fixed part can read as "
    "a steeper class; else \"inconclusive (the live-tensor peak fits …)\"."
)


def complexity_section(doc: Doc, runs: list[tuple[str, pd.DataFrame]], profiles: list[Profile],
                       declared: dict[str, dict[str, float]] | None, baseline: str) -> None:
    """The exponent table per group, then the crossover table per group."""
    from_fits, by_mixer = _declared_exponents(profiles, declared)
    doc.h2("Complexity: fitted exponents", "complexity")
    doc.p(_INTRO)
    multi = len(runs) > 1
    crossings: list[tuple[str, dict, int, list[list[Any]]]] = []
    for run, cells in runs:
        groups = group_cells(cells)
        for group, part in groups:
            group_heading(doc, run, group, multi, len(groups))
            fits = series_fits(part)
            labels = sorted(part["label"].unique(), key=str)
            base = resolve_baseline(labels, baseline)
            rows, cross_rows = [], []
            for label in labels:
                row: list[Any] = [label]
                for metric in (TIME, MEMORY):
                    exp = from_fits.get((label, group["scope"], group["mode"], metric.name))
                    if exp is None:
                        exp = by_mixer.get(mixer_of(label), {}).get(metric.name)
                    row += [_exponent_cell(fits[(label, metric.name)], exp), declared_class(exp)]
                series = [fits[(label, m.name)] for m in (TIME, MEMORY)]
                models = sorted({f.fit.model for f in series if f.fit is not None})
                rows.append(row + [", ".join(models) or "–", _lengths_cell(series)])
                if base is not None and label != base:
                    cross_rows.append([label] + [_crossover(part, label, base, m, fits) for m in (TIME, MEMORY)])
            doc.frame(Frame(["mixer", "time k [95% CI]", "declared", "memory k [95% CI]", "declared", "model",
                             "lengths fitted"], rows))
            n_lengths = part["T"].nunique()
            if n_lengths < MIN_FIT_LENGTHS:
                doc.p(f"Only {n_lengths} length(s): no exponent is fitted or judged below {MIN_FIT_LENGTHS} "
                      "lengths; sweep at least 6 geometrically spaced lengths for asymptotic ones.")
            elif n_lengths < MIN_POINTS_OFFSET:
                doc.p(f"Only {n_lengths} lengths: these exponents include fixed overheads (launches, "
                      "projections) and cache effects; sweep at least 6 geometrically spaced lengths for "
                      "asymptotic ones.")
            crossings.append((run, group, len(groups), cross_rows))
    _crossover_tables(doc, crossings, baseline, multi)


def _crossover_tables(doc: Doc, crossings, baseline: str, multi: bool) -> None:
    doc.h2("Crossovers against the baseline", "crossovers")
    doc.p(
        f"The length from which each mixer is cheaper than the baseline ({baseline}) and stays cheaper: "
        "measured (interpolated on log T between the two lengths that bracket the sign change; a "
        "baseline that fails where the mixer runs counts as the mixer being cheaper), or ⚠ "
        "extrapolated from both fits when the measured range ends before it, with a bootstrap interval. "
        "Noisy or contended timings are left out, and only fits on clean data are extrapolated. "
        f"Crossovers are searched up to {format_length(CROSSOVER_CAP)} tokens: beyond that the answer "
        f"reads \"none below {format_length(CROSSOVER_CAP)} tokens\"."
    )
    if not any(rows for *_, rows in crossings):
        doc.p(f"No crossover to compute: baseline {baseline!r} is not among the measured mixers.")
        return
    for run, group, n_groups, rows in crossings:
        if rows:
            group_heading(doc, run, group, multi, n_groups)
            doc.frame(Frame(["mixer", "faster than the baseline from", "lighter than the baseline from"], rows))

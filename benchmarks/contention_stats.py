"""Statistics of ``bench_contention.py``: a loaded sweep against a quiet one at the same thread
count (issue 10). Pure functions of cell records (``docs/RECORDS.md``); numpy only, no torch.

- ratio to the baseline mixer at the same (mode, T): the share of cells whose loaded ratio is
  within 15% of the quiet one, and the cells outside 15% that the loaded run did not flag
  (not clean: ``noisy``, ``contended`` or timed beside busy ``neighbours``); a ratio is flagged
  when either of its two cells is;
- fitted time exponents (``reports.fit.fit_scaling``, the report's own fit) per (label, mode),
  both runs fitted on the same lengths: those where both cells are ``ok`` and clean when there are
  enough, else every length ``ok`` in both (the report's rule, ``reports.fit.fit_series``: it
  fits clean cells only when it can, else all of them with a ``~``); the largest absolute difference;
- the ranking of mixers per (mode, T): Kendall's tau-b between the two runs (mean and minimum);
- the quiet run's flagged (not clean) share.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable

__all__ = ["TOLERANCE", "TARGETS", "load_cells", "flagged", "thread_count", "compare_ratios",
           "compare_exponents", "compare_rankings", "flagged_share", "kendall_tau", "contention_summary",
           "evaluate"]

TOLERANCE = 0.15  # a loaded ratio within 15% of the quiet one agrees
MIN_FIT_LENGTHS = 3
# target name -> (bound, "min" = value must be >= bound, "max" = value must be <= bound)
TARGETS = {
    "share_within": (0.90, "min"),
    "unflagged_outliers": (0, "max"),
    "max_exponent_diff": (0.10, "max"),
    "kendall_tau_mean": (0.90, "min"),
    "quiet_flagged_share": (0.10, "max"),
}

Key = tuple  # (label, mode, T)


def load_cells(path: str | Path) -> list[dict[str, Any]]:
    """The cell records of a JSONL profile; the last record per ``key`` wins (as the report)."""
    latest: dict[Any, dict] = {}
    with open(path) as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("kind", "cell") == "cell":
                latest[rec.get("key") or (rec.get("label"), rec.get("mode"), rec.get("T"), n)] = rec
    return list(latest.values())


def flagged(cell: dict[str, Any]) -> bool:
    """Not clean (noisy, contended, or beside busy neighbours): the report's rule
    (:func:`reports.cells.unclean_reasons`)."""
    from reports.cells import unclean_reasons

    return bool(unclean_reasons(cell))


def _ok(cells: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(c["label"], c["mode"], c["T"]): c for c in cells
            if c.get("status") == "ok" and (c.get("time_median_s") or 0) > 0}


def thread_count(cells: Iterable[dict[str, Any]]) -> int:
    """The one thread count a run's cells recorded; ValueError if none or several."""
    seen = {c.get("threads") for c in cells if c.get("status") == "ok"}
    if len(seen) != 1 or None in seen:
        raise ValueError(f"threads: expected one thread count in the run's ok cells, got {sorted(seen, key=str)}")
    return int(seen.pop())


def _ratios(ok: dict[Key, dict], baseline: str) -> dict[Key, tuple[float, bool]]:
    out = {}
    for (label, mode, T), c in ok.items():
        base = ok.get((baseline, mode, T))
        if label != baseline and base is not None:
            out[(label, mode, T)] = (c["time_median_s"] / base["time_median_s"], flagged(c) or flagged(base))
    return out


def compare_ratios(loaded: list[dict], quiet: list[dict], baseline: str, tol: float = TOLERANCE) -> dict[str, Any]:
    """Loaded vs quiet ratio to ``baseline`` per (label, mode, T) present in both runs."""
    rl, rq = _ratios(_ok(loaded), baseline), _ratios(_ok(quiet), baseline)
    rows, outliers = [], []
    for key in sorted(set(rl) & set(rq)):
        (a, flag), (b, _) = rl[key], rq[key]
        off = a / b - 1.0
        rows.append({"cell": key, "loaded": a, "quiet": b, "off": off, "flagged": flag})
        if abs(off) > tol and not flag:
            outliers.append(key)
    within = sum(abs(r["off"]) <= tol for r in rows)
    return {"n": len(rows), "within": within, "share_within": within / len(rows) if rows else float("nan"),
            "unflagged_outliers": len(outliers), "outlier_cells": outliers, "rows": rows}


def compare_exponents(loaded: list[dict], quiet: list[dict]) -> dict[str, Any]:
    """Time exponents of both runs per (label, mode), fitted on the same clean lengths."""
    from reports.fit import fit_scaling

    ol, oq = _ok(loaded), _ok(quiet)
    both: dict[tuple, list[int]] = {}
    clean: dict[tuple, list[int]] = {}
    for (label, mode, T), c in ol.items():
        if (label, mode, T) in oq:
            both.setdefault((label, mode), []).append(T)
            if not flagged(c) and not flagged(oq[(label, mode, T)]):
                clean.setdefault((label, mode), []).append(T)
    rows, skipped = [], []
    for (label, mode) in sorted({(k[0], k[1]) for k in ol} | {(k[0], k[1]) for k in oq}):
        lengths = sorted(clean.get((label, mode), []))
        all_clean = len(lengths) >= MIN_FIT_LENGTHS
        if not all_clean:  # the report then fits every length, with a ~ and no verdict
            lengths = sorted(both.get((label, mode), []))
        if len(lengths) < MIN_FIT_LENGTHS:
            skipped.append((label, mode))
            continue
        ks = []
        for ok in (ol, oq):
            cells = [ok[(label, mode, T)] for T in lengths]
            fit = fit_scaling(lengths, [c["time_median_s"] for c in cells], n_boot=2)
            ks.append(fit.k if fit is not None else float("nan"))
        rows.append({"series": (label, mode), "lengths": lengths, "loaded": ks[0], "quiet": ks[1],
                     "diff": abs(ks[0] - ks[1]), "clean": all_clean})
    diffs = [r["diff"] for r in rows if not math.isnan(r["diff"])]
    return {"max_exponent_diff": max(diffs) if diffs else float("nan"), "rows": rows, "skipped": skipped}


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two paired lists (ties in either count as neither concordant nor
    discordant); nan with fewer than two pairs or a constant list."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: expected lists of one length, got {len(a)} and {len(b)}")
    conc = disc = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom > 0 else float("nan")


def compare_rankings(loaded: list[dict], quiet: list[dict]) -> dict[str, Any]:
    """Kendall's tau between the runs' orderings of mixers by time, per (mode, T)."""
    ol, oq = _ok(loaded), _ok(quiet)
    groups: dict[tuple, list[Key]] = {}
    for key in set(ol) & set(oq):
        groups.setdefault((key[1], key[2]), []).append(key)
    rows = []
    for group in sorted(groups):
        keys = sorted(groups[group])
        if len(keys) >= 2:
            tau = kendall_tau([ol[k]["time_median_s"] for k in keys], [oq[k]["time_median_s"] for k in keys])
            rows.append({"group": group, "mixers": len(keys), "tau": tau})
    taus = [r["tau"] for r in rows if not math.isnan(r["tau"])]
    return {"kendall_tau_mean": sum(taus) / len(taus) if taus else float("nan"),
            "kendall_tau_min": min(taus) if taus else float("nan"), "rows": rows}


def flagged_share(cells: list[dict]) -> dict[str, Any]:
    ok = list(_ok(cells).values())
    n_flag = sum(flagged(c) for c in ok)
    return {"n": len(ok), "flagged": n_flag, "noisy": sum(bool(c.get("noisy")) for c in ok),
            "contended": sum(bool(c.get("contended")) for c in ok),
            "neighbours": sum(bool(c.get("neighbours")) for c in ok),
            "share": n_flag / len(ok) if ok else float("nan")}


def contention_summary(cells: list[dict]) -> dict[str, Any]:
    """What a run's cells recorded about contention (fields absent before the probe is wired)."""
    ok = list(_ok(cells).values())
    other = [c["other_cpu"] for c in ok if c.get("other_cpu") is not None]
    beside = [c["neighbour_cpu"] for c in ok if c.get("neighbour_cpu") is not None]
    return {"cells": len(ok), "contended_cells": sum(bool(c.get("contended")) for c in ok),
            "neighbour_cells": sum(bool(c.get("neighbours")) for c in ok),
            "neighbour_cpu_mean": sum(beside) / len(beside) if beside else None,
            "contended_samples": sum(int(c.get("contended_samples") or 0) for c in ok),
            "samples": sum(int(c.get("time_n") or 0) for c in ok),
            "other_cpu_mean": sum(other) / len(other) if other else None,
            "probed": any("contended" in c or "other_cpu" in c for c in ok)}


def _passes(value: float, bound: float, sense: str) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return value >= bound if sense == "min" else value <= bound


def evaluate(loaded: list[dict], quiet: list[dict], baseline: str) -> dict[str, Any]:
    """Every statistic of one loaded/quiet pair, and ``targets``: {name: (value, bound, passed)}."""
    ratios = compare_ratios(loaded, quiet, baseline)
    exps = compare_exponents(loaded, quiet)
    ranks = compare_rankings(loaded, quiet)
    quiet_flags = flagged_share(quiet)
    values = {"share_within": ratios["share_within"], "unflagged_outliers": ratios["unflagged_outliers"],
              "max_exponent_diff": exps["max_exponent_diff"], "kendall_tau_mean": ranks["kendall_tau_mean"],
              "quiet_flagged_share": quiet_flags["share"]}
    targets = {name: (values[name], bound, _passes(values[name], bound, sense))
               for name, (bound, sense) in TARGETS.items()}
    return {"ratios": ratios, "exponents": exps, "rankings": ranks, "quiet_flags": quiet_flags,
            "loaded_flags": flagged_share(loaded), "contention": {"loaded": contention_summary(loaded),
                                                                   "quiet": contention_summary(quiet)},
            "targets": targets, "passed": all(t[2] for t in targets.values())}

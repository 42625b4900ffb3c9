"""Rules about one cell record (a dict as in ``docs/RECORDS.md``), shared by the report and the
profiler (standard library only):

* **clean**: an ``ok`` timing taken on a quiet machine: not ``noisy`` (IQR / median above the
  profiler's threshold after its repetition budget), not ``contended`` (other processes used the
  cores while it was timed) and not timed beside busy ``neighbours`` (other processes used the
  cores the sweep left free: they share caches, memory bandwidth, perhaps physical cores). Only
  clean timings feed exponent verdicts and crossovers. Records written before a field existed read
  as not flagged by it.
* **series**: the cells of one curve T -> cost. Everything that changes the comparison but T
  is part of it, the thread count included: cells timed with different thread counts are never
  one series, one fit or one line.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["SERIES_FIELDS", "series_identity", "is_noisy", "is_contended", "has_neighbours", "is_clean", "record_flag",
           "unclean_reasons", "timing_mark", "failure_text", "mixer_of", "resolve_baseline", "NEIGHBOUR_EFFECT"]

# what busy neighbours on the free cores did to timings, as measured (benchmarks/bench_contention.py,
# 2026-12-02): quoted by the pre-flight note and the report, the reason such cells are not clean
NEIGHBOUR_EFFECT = "on the 2-core VM one such process moved ratios between mixers by up to 28%"

SERIES_FIELDS = ("label", "scope", "mode", "batch", "dim", "heads", "depth", "dtype", "device", "causal", "model",
                 "pad_fraction", "compile", "threads")


def record_flag(value: Any) -> bool:
    """A boolean field as written by any version (true, "true", 1); missing or null is False."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def is_noisy(record: Mapping[str, Any]) -> bool:
    return record_flag(record.get("noisy"))


def is_contended(record: Mapping[str, Any]) -> bool:
    return record_flag(record.get("contended"))


def has_neighbours(record: Mapping[str, Any]) -> bool:
    return record_flag(record.get("neighbours"))


def unclean_reasons(record: Mapping[str, Any]) -> list[str]:
    """Why a timing is not clean, in the report's words and order (contended, neighbours, noisy)."""
    return [why for why, flag in (("contended", is_contended(record)), ("neighbours", has_neighbours(record)),
                                  ("noisy", is_noisy(record))) if flag]


def timing_mark(record: Mapping[str, Any]) -> str:
    """The mark a timing carries in every table: '≈' taken on a busy machine (contended, or beside
    busy neighbours), '~' noisy, '' clean."""
    reasons = unclean_reasons(record)
    return "≈" if "contended" in reasons or "neighbours" in reasons else ("~" if reasons else "")


def failure_text(row: Mapping[str, Any]) -> str:
    """The table text of a cell that has no number, in every table (the report's and the profiler's):
    OOM, OOM† (inferred: predicted, or skipped after a shorter OOM), timeout, killed, n/a, error."""
    status = row["status"]
    reason = str(row.get("reason") or "").lower()
    if status == "oom" or (status == "skipped" and "oom" in reason):
        inferred = record_flag(row.get("inferred")) or status == "skipped"  # NaN (a pandas row) is not inferred
        return "OOM†" if inferred else "OOM"
    return {"timeout": "timeout", "killed": "killed", "unsupported": "n/a", "error": "error",
            "skipped": "skipped"}.get(status, "–")


def mixer_of(label: str) -> str:
    """'softmax[impl=eager]' -> 'softmax' (variants of a mixer share its colour)."""
    return str(label).split("[", 1)[0]


def resolve_baseline(labels: list[str], baseline: str | None) -> str | None:
    """The label a baseline name refers to: the exact label, else the one variant of that mixer,
    else the plain mixer name among several variants. None if absent or ambiguous."""
    if not baseline:
        return None
    if baseline in labels:
        return baseline
    variants = [label for label in labels if mixer_of(label) == baseline]
    return variants[0] if len(variants) == 1 else None


def is_clean(record: Mapping[str, Any]) -> bool:
    """An ok cell whose timing is neither noisy, nor contended, nor taken beside busy neighbours."""
    return record.get("status") == "ok" and not unclean_reasons(record)


def _freeze(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def series_identity(cell: Any, **given: Any) -> tuple:
    """The series a cell belongs to: its :data:`SERIES_FIELDS`. ``cell`` is a record (a dict) or a
    planned cell (an object with those attributes); ``given`` supplies fields the object lacks
    (the profiler passes its sweep-wide ``threads``). Missing fields read as None; records older
    than ``pad_fraction`` had no padding, and ``compile`` is null or absent for eager steps."""
    get = cell.get if isinstance(cell, Mapping) else (lambda k: getattr(cell, k, None))
    out = []
    for key in SERIES_FIELDS:
        v = given[key] if key in given else get(key)
        if key == "pad_fraction":
            v = float(v or 0.0)
        elif key == "compile":
            v = v or None
        out.append(_freeze(v))
    return tuple(out)

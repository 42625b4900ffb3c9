"""Fit records (``kind="fit"``, ``docs/RECORDS.md``) from cell records: one per label x scope x
mode x metric, with the exponent's bootstrap interval and the spec's declared exponent.

Torch-free (numpy only, through :mod:`reports.fit`): the math lives in ONE place,
:func:`reports.fit.fit_scaling` (``y = a + b T^k`` on relative residuals with >= 5 lengths, the
plain log-log slope below that; bootstrap over raw timing samples, or over log residuals for
memory). Only ``ok`` cells are fitted: OOM, timeout and error cells are censored data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from reports.fit import fit_scaling

__all__ = ["METRICS", "MIN_FIT_LENGTHS", "FLAG_DELTA", "fit_records"]

# metric -> (cell field, field with raw samples or None)
METRICS = {"time": ("time_median_s", "time_samples"), "memory": ("mem_peak_bytes", None)}
MIN_FIT_LENGTHS = 3  # fewer distinct lengths say nothing about an exponent
FLAG_DELTA = 0.3  # |k - declared| above this is flagged (PROFILING.md 5.7)

# the identity of a series: everything but T
_SERIES = ("label", "scope", "mode", "batch", "dim", "heads", "depth", "dtype", "device", "causal")


def fit_records(
    cells: Iterable[dict[str, Any]],
    declared: dict[str, dict[str, float | None]] | None = None,
    *,
    run_id: str | None = None,
    n_boot: int = 200,
) -> list[dict[str, Any]]:
    """Fit records for every series (same label and shape settings, varying T) with enough ``ok``
    lengths. ``declared[mixer] = {"time": k, "memory": k}`` from the specs (None if unknown).
    The last record per cell ``key`` wins (a resumed or repeated cell)."""
    latest: dict[Any, dict] = {}
    for c in cells:
        if c.get("kind", "cell") != "cell":
            continue
        latest[c.get("key") or id(c)] = c
    series: dict[tuple, list[dict]] = defaultdict(list)
    for c in latest.values():
        if c.get("status") == "ok":
            series[tuple(_freeze(c.get(k)) for k in _SERIES)].append(c)
    out = []
    for ident, rows in series.items():
        rows.sort(key=lambda r: r["T"])
        meta = dict(zip(_SERIES, ident))
        mixer = rows[0].get("mixer")
        for metric, (field, samples_field) in METRICS.items():
            pts = [r for r in rows if _positive(r.get(field))]
            if len({r["T"] for r in pts}) < MIN_FIT_LENGTHS:
                continue
            samples = [r.get(samples_field) for r in pts] if samples_field else None
            fit = fit_scaling([r["T"] for r in pts], [float(r[field]) for r in pts], samples, n_boot=n_boot)
            if fit is None:
                continue
            k_declared = (declared or {}).get(mixer, {}).get(metric)
            out.append(
                {
                    "kind": "fit",
                    "schema": 1,
                    "run_id": run_id,
                    "label": meta["label"],
                    "mixer": mixer,
                    "scope": meta["scope"],
                    "mode": meta["mode"],
                    "batch": meta["batch"],
                    "dim": meta["dim"],
                    "heads": meta["heads"],
                    "dtype": meta["dtype"],
                    "device": meta["device"],
                    "metric": metric,
                    "k": fit.k,
                    "k_lo": fit.k_lo,
                    "k_hi": fit.k_hi,
                    "a": fit.a,
                    "b": fit.b,
                    "model": fit.model,
                    "lengths": fit.lengths,
                    "declared": k_declared,
                    "flagged": bool(k_declared is not None and abs(fit.k - k_declared) > FLAG_DELTA),
                }
            )
    return out


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v

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

from reports.cells import is_clean
from reports.fit import MIN_FIT_LENGTHS, Fit, SeriesFit, fit_series, judge_exponent
from reports.generation import decode_exponent
from reports.load import SCHEMA_VERSION as SCHEMA
from reports.cells import SERIES_FIELDS, series_identity
from reports.metrics import MEMORY_CHECK

__all__ = ["METRICS", "MIN_FIT_LENGTHS", "fit_records"]

# metric -> (cell field, field with raw samples or None)
# (decode cells: time is per generated token, and "state" the bytes held by the generation state)
METRICS = {"time": ("time_median_s", "time_samples"), "memory": ("mem_peak_bytes", None), "state": ("state_bytes", None)}
# metric -> the cell field that cross-checks its verdict (reports.fit.fit_series's ``check``)
CHECKS = {"memory": MEMORY_CHECK}


def fit_records(
    cells: Iterable[dict[str, Any]],
    declared: dict[str, dict[str, float | None]] | None = None,
    *,
    run_id: str | None = None,
    n_boot: int | None = None,
) -> list[dict[str, Any]]:
    """Fit records for every series (:data:`reports.cells.SERIES_FIELDS`: same settings, varying T)
    with enough ``ok`` lengths. ``declared[label]`` (or ``declared[mixer]``) ``= {"time": k,
    "memory": k}`` from the spec as it holds for that config (None if unknown). ``flagged`` and
    ``verdict`` follow :func:`reports.fit.judge_exponent`, the report's rule (time is fitted on
    clean timings when there are enough, :func:`reports.fit.fit_series`). The last record
    per cell ``key`` wins (a resumed or repeated cell)."""
    latest: dict[Any, dict] = {}
    for c in cells:
        if c.get("kind", "cell") != "cell":
            continue
        latest[c.get("key") or id(c)] = c
    series: dict[tuple, list[dict]] = defaultdict(list)
    for c in latest.values():
        if c.get("status") == "ok":
            series[series_identity(c)].append(c)
    out = []
    for ident, rows in series.items():
        rows.sort(key=lambda r: r["T"])
        meta = dict(zip(SERIES_FIELDS, ident))
        mixer = rows[0].get("mixer")
        for metric, (field, samples_field) in METRICS.items():
            pts = [r for r in rows if _positive(r.get(field))]
            if len({r["T"] for r in pts}) < MIN_FIT_LENGTHS:
                continue
            samples = [r.get(samples_field) for r in pts] if samples_field else None
            clean = [is_clean(r) for r in pts] if samples_field else None  # memory readings are always clean
            boot = {} if n_boot is None else {"n_boot": n_boot}
            if meta["mode"] == "decode":  # the decode slope over the longer contexts (reports.generation)
                fit = _decode_fit([r["T"] for r in pts], [float(r[field]) for r in pts], samples, **boot)
                series_fit = SeriesFit(fit, all(clean) if clean else True, fit.lengths if fit else [], [])
            else:
                check = [r.get(CHECKS[metric]) for r in pts] if metric in CHECKS else None
                series_fit = fit_series([r["T"] for r in pts], [float(r[field]) for r in pts], clean, samples, **boot,
                                        class_from=[r.get("class_from") for r in pts], check=check)
                fit = series_fit.fit
            if fit is None:
                continue
            classes = (declared or {}).get(meta["label"]) or (declared or {}).get(mixer) or {}
            k_declared = classes.get(f"decode_{metric}" if meta["mode"] == "decode" else metric)
            verdict = judge_exponent(series_fit, k_declared).status
            shape = {k: meta[k] for k in ("label", "scope", "mode", "batch", "dim", "heads", "dtype", "device",
                                          "causal", "pad_fraction", "compile", "threads")}
            out.append({"kind": "fit", "schema": SCHEMA, "run_id": run_id, "mixer": mixer, **shape, "metric": metric,
                        "k": fit.k, "k_lo": fit.k_lo, "k_hi": fit.k_hi, "a": fit.a, "b": fit.b, "model": fit.model,
                        "lengths": fit.lengths, "declared": k_declared, "flagged": verdict == "flagged",
                        "verdict": verdict, "clean": series_fit.clean})
    return out


def _decode_fit(lengths, values, samples=None, n_boot: int = 200) -> Fit | None:
    """Decode series: :func:`reports.generation.decode_exponent` (log-log slope over the longer
    contexts) as a power-law Fit, so the record and the verdict read like every other fit."""
    got = decode_exponent(lengths, values, samples, n_boot=n_boot)
    if got is None:
        return None
    k, lo, hi = got
    b = math.exp(sum(math.log(v) - k * math.log(T) for T, v in zip(lengths, values)) / len(values))
    import numpy as np

    return Fit(k=k, k_lo=lo, k_hi=hi, a=0.0, b=b, model="decode-slope", lengths=[int(T) for T in sorted(lengths)],
               boot=np.empty((0, 3)))


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

"""Projected numbers (``kind = "projection"`` records from ``zoo project``), always marked as such:
the largest length that fits the memory budget, the crossover lengths against a baseline, the
projected tables, and the calibration table (projection vs measurement of the same cells).

Pure Python over record dicts (no torch, no zoo): the report and the CLI both call it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from reports.metrics import format_bytes

__all__ = ["largest_fitting", "crossovers", "projection_markdown", "calibration_rows", "calibration_markdown",
           "MEMORY_TOLERANCE", "RATIO_TOLERANCE"]

MEMORY_TOLERANCE = 0.10  # projected peak memory within 10% of measured (the target, 4k..16k)
RATIO_TOLERANCE = 2.0  # projected time ratio to the baseline within 2x of measured


def _series(records: Iterable[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("kind") == "projection":
            out.setdefault((r["label"], r["mode"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["T"]) for k, v in out.items()}


def largest_fitting(records: Iterable[dict]) -> list[dict[str, Any]]:
    """Per (label, mode): the largest projected T whose absolute peak fits the budget, and the
    first that does not (None: every length fits, or none was projected)."""
    rows = []
    for (label, mode), rs in _series(records).items():
        ok = [r for r in rs if r["status"] == "ok"]
        fit = [r["T"] for r in ok if r.get("fits")]
        over = [r["T"] for r in ok if r.get("fits") is False]
        rows.append({"label": label, "mode": mode, "largest_T": max(fit) if fit else None,
                     "first_over_T": min(over) if over else None,
                     "budget_bytes": rs[0].get("memory_budget_bytes"), "device": rs[0].get("device")})
    return rows


def crossovers(records: Iterable[dict], baseline: str = "softmax") -> list[dict[str, Any]]:
    """Per (label, mode): the length where its projected time falls below the baseline's
    (log-log interpolation between lengths); ``None`` with a note when it never does."""
    series = _series(records)
    rows = []
    for (label, mode), rs in series.items():
        base = {r["T"]: r.get("time_s") for r in series.get((baseline, mode), []) if r["status"] == "ok"}
        if label == baseline or not base:
            continue
        pts = [(r["T"], r["time_s"] / base[r["T"]]) for r in rs
               if r["status"] == "ok" and r.get("time_s") and base.get(r["T"])]
        row = {"label": label, "mode": mode, "baseline": baseline, "crossover_T": None, "note": "never faster"}
        if pts and pts[0][1] < 1:
            row.update(crossover_T=pts[0][0], note="faster from the shortest length")
        for (T1, q1), (T2, q2) in zip(pts, pts[1:]):
            if q1 >= 1 > q2:
                f = math.log(q1) / (math.log(q1) - math.log(q2))
                row.update(crossover_T=int(round(T1 * (T2 / T1) ** f)), note="projected")
                break
        rows.append(row)
    return rows


def _t(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"


def projection_markdown(records: list[dict], baseline: str = "softmax") -> str:
    """The projected tables (time, peak memory, fits?) with "projected" in every heading."""
    recs = [r for r in records if r.get("kind") == "projection"]
    if not recs:
        return ""
    dev = recs[0].get("device_name") or recs[0].get("device")
    lines = [f"## Projected (not measured) on {dev}", "",
             "Peak memory from the fake-tensor pass, time from a roofline (per op: max(FLOPs / peak, bytes / "
             "bandwidth) + launch overhead); `fit`: extrapolated in closed form from shorter lengths.", "",
             "| mixer | mode | T | projected time | projected peak | fits | method |", "|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r["label"], r["mode"], r["T"])):
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['mode']} | {r['T']} | {r['status']} | {r.get('reason') or ''} | | |")
            continue
        lines.append(f"| {r['label']} | {r['mode']} | {r['T']} | {_t(r.get('time_s'))} | "
                     f"{format_bytes(r.get('mem_abs_peak_bytes'))} | {'yes' if r.get('fits') else 'no'} | {r.get('method')} |")
    lines += ["", "### Largest length within the memory budget (projected)", "", "| mixer | mode | largest T | first over |",
              "|---|---|---|---|"]
    for row in largest_fitting(recs):
        lines.append(f"| {row['label']} | {row['mode']} | {row['largest_T'] or 'none'} | {row['first_over_T'] or '-'} |")
    lines += ["", f"### Crossover with {baseline} (projected)", "", "| mixer | mode | faster from T | note |", "|---|---|---|---|"]
    for row in crossovers(recs, baseline):
        lines.append(f"| {row['label']} | {row['mode']} | {row['crossover_T'] or '-'} | {row['note']} |")
    return "\n".join(lines) + "\n"


def calibration_rows(projected: list[dict], measured: list[dict], baseline: str = "softmax") -> list[dict[str, Any]]:
    """Projection vs measurement of the same cells (matched by cell key): peak memory (step peak,
    both sides) and the time ratio to ``baseline`` at the same (T, mode, scope)."""
    meas = {r["key"]: r for r in measured if r.get("kind") == "cell" and r.get("status") == "ok"}
    proj = {r["key"]: r for r in projected if r.get("kind") == "projection" and r.get("status") == "ok"}

    def by_shape(rs: dict) -> dict[tuple, dict]:
        return {(r["T"], r["mode"], r["scope"]): r for r in rs.values() if r["label"] == baseline}

    mb, pb = by_shape(meas), by_shape(proj)
    rows = []
    for key, m in meas.items():
        p = proj.get(key)
        if p is None:
            continue
        row = {"label": m["label"], "mode": m["mode"], "scope": m["scope"], "T": m["T"],
               "mem_measured": m.get("mem_peak_bytes"), "mem_projected": p.get("mem_peak_bytes"),
               "mem_error": None, "ratio_measured": None, "ratio_projected": None, "ratio_factor": None}
        if row["mem_measured"] and row["mem_projected"] is not None:
            row["mem_error"] = row["mem_projected"] / row["mem_measured"] - 1
        shape = (m["T"], m["mode"], m["scope"])
        if shape in mb and shape in pb and m.get("time_median_s") and mb[shape].get("time_median_s") and p.get("time_s") \
                and pb[shape].get("time_s"):
            row["ratio_measured"] = m["time_median_s"] / mb[shape]["time_median_s"]
            row["ratio_projected"] = p["time_s"] / pb[shape]["time_s"]
            row["ratio_factor"] = max(row["ratio_projected"], row["ratio_measured"]) / min(row["ratio_projected"],
                                                                                            row["ratio_measured"])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["scope"], r["label"], r["mode"], r["T"]))


def calibration_markdown(rows: list[dict], baseline: str = "softmax") -> str:
    """The calibration table; each row says whether it meets the targets (memory within 10%,
    time ratio within 2x)."""
    lines = [f"## Calibration: projected vs measured (time ratios to {baseline})", "",
             "| scope | mixer | mode | T | measured peak | projected peak | error | measured ratio | projected ratio | "
             "factor | within targets |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem_ok = r["mem_error"] is not None and abs(r["mem_error"]) <= MEMORY_TOLERANCE
        ratio_ok = r["ratio_factor"] is None or r["ratio_factor"] <= RATIO_TOLERANCE
        err = "n/a" if r["mem_error"] is None else f"{100 * r['mem_error']:+.1f}%"
        ratio = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
        verdict = "yes" if mem_ok and ratio_ok else ("memory" if not mem_ok else "") + (" time" if not ratio_ok else "")
        lines.append(f"| {r['scope']} | {r['label']} | {r['mode']} | {r['T']} | {format_bytes(r['mem_measured'])} | "
                     f"{format_bytes(r['mem_projected'])} | {err} | {ratio(r['ratio_measured'])} | "
                     f"{ratio(r['ratio_projected'])} | {ratio(r['ratio_factor'])} | {verdict.strip()} |")
    return "\n".join(lines) + "\n"

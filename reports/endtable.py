"""The profiler's end table: one cell of text per (mixer, mode, T), ``time · held memory (time
ratio to the baseline)``, and the legend of the marks shown. Timings that are not clean read with
a leading ``≈`` (contended or beside busy neighbours) or ``~`` (noisy)
(:func:`reports.cells.timing_mark`, the report's rule); failed cells their status
(:func:`reports.cells.failure_text`: ``OOM``, ``OOM†`` when inferred, ``timeout``, ``n/a``, ...).
A decode cell holds its generation state (``state_bytes``), the others their peak memory.
Standard library only, so the profiler can call it on the records it just wrote:
:mod:`profiler.table` prints it with rich, :func:`end_table_rows` gives plain rows.

    rows, notes = end_table_rows(records, baseline="softmax")
    print(render_table(rows, fmt, width=terminal_width(fmt), notes=notes))
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from reports.cells import failure_text, resolve_baseline, timing_mark
from reports.formats import format_bytes, format_time

__all__ = ["end_table_rows", "cell_text", "legend", "MARK_NOTES"]

# (text a cell shows, what it means), in the legend's order; a note is shown when its mark is
MARK_NOTES = (
    ("≈", "≈ contended or beside busy neighbours (other processes used the cores)"),
    ("~", "~ noisy (IQR/median > 10%)"),
    ("OOM†", "OOM† inferred, not run (predicted, or after a shorter OOM)"),
    ("n/a", "n/a unsupported"),
)


def cell_text(rec: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    """One cell's text; ``base``: the baseline's cell at the same (mode, T), or None."""
    if rec.get("status") != "ok":
        return failure_text(rec)
    held = rec.get("state_bytes") if rec.get("mode") == "decode" else rec.get("mem_peak_bytes")
    text = f"{timing_mark(rec)}{format_time(rec.get('time_median_s'))} · {format_bytes(held)}"
    t, b = rec.get("time_median_s"), (base or {}).get("time_median_s")
    if base is not None and base is not rec and base.get("status") == "ok" and t and b:
        text += f" ({t / b:.2f}×)"
    return text


def legend(texts: Iterable[str]) -> list[str]:
    """The notes for the marks that appear in ``texts`` (the cells shown)."""
    shown = " ".join(texts)
    return [note for mark, note in MARK_NOTES if mark in shown]


def end_table_rows(records: Iterable[Mapping[str, Any]], baseline: str | None = "softmax"
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (``mixer``, ``mode``, ``threads`` when several, then one ``T=...`` column per length) and
    the notes explaining the marks that appear. The last record of a cell wins."""
    cells: dict[tuple, Mapping[str, Any]] = {}
    for rec in records:
        if rec.get("kind", "cell") == "cell":
            cells[(rec.get("label") or rec.get("mixer"), rec.get("mode"), rec.get("threads"), rec.get("T"))] = rec
    lengths = sorted({k[3] for k in cells})
    several_threads = len({k[2] for k in cells}) > 1
    series = list(dict.fromkeys(k[:3] for k in cells))
    labels = list(dict.fromkeys(k[0] for k in series))
    base = resolve_baseline(labels, baseline)
    rows = []
    for label, mode, threads in series:
        row: dict[str, Any] = {"mixer": label, "mode": mode}
        if several_threads:
            row["threads"] = threads
        for T in lengths:
            rec = cells.get((label, mode, threads, T))
            row[f"T={T}"] = "" if rec is None else cell_text(rec, cells.get((base, mode, threads, T)))
        rows.append(row)
    notes = ["time · peak memory" + (f" (time as a multiple of {base}'s)" if base else "")]
    notes += legend(str(v) for row in rows for v in row.values())
    return rows, [" · ".join(notes)]

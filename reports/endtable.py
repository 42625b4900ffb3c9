"""The profiler's end table as rows for :func:`reports.text.render_table`: one row per mixer
and mode, one column per length, each cell ``time · peak memory (time ratio to the baseline)``.
Timings that are not clean read with a leading ``~`` (noisy) or ``≈`` (contended), failed cells
their status (``OOM``, ``OOM†`` when inferred, ``timeout``, ``n/a``, ``error``). Standard library
only, so the profiler can call it on the records it just wrote.

    rows, notes = end_table_rows(records, baseline="softmax")
    print(render_table(rows, fmt, width=terminal_width(fmt), notes=notes))
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from reports.cells import timing_mark
from reports.formats import format_bytes, format_time

__all__ = ["end_table_rows", "STATUS_TEXT"]

STATUS_TEXT = {"oom": "OOM", "timeout": "timeout", "unsupported": "n/a", "error": "error", "skipped": "skipped"}


def _cell_text(rec: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    status = rec.get("status")
    if status != "ok":
        text = STATUS_TEXT.get(str(status), str(status))
        reason = str(rec.get("reason") or "").lower()
        if status == "oom" and rec.get("inferred") or status == "skipped" and "oom" in reason:
            text = "OOM†"
        return text
    mark = timing_mark(rec)
    text = f"{mark}{format_time(rec.get('time_median_s'))} · {format_bytes(rec.get('mem_peak_bytes'))}"
    t, b = rec.get("time_median_s"), (base or {}).get("time_median_s")
    if base is not None and base is not rec and base.get("status") == "ok" and t and b:
        text += f" ({t / b:.2f}×)"
    return text


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
    base = baseline if baseline in labels else next((x for x in labels if str(x).split("[")[0] == baseline), None)
    rows = []
    for label, mode, threads in series:
        row: dict[str, Any] = {"mixer": label, "mode": mode}
        if several_threads:
            row["threads"] = threads
        for T in lengths:
            rec = cells.get((label, mode, threads, T))
            row[f"T={T}"] = "" if rec is None else _cell_text(rec, cells.get((base, mode, threads, T)))
        rows.append(row)
    texts = " ".join(str(v) for row in rows for v in row.values())
    notes = ["time · peak memory" + (f" (time as a multiple of {base}'s)" if base else "")]
    for mark, note in (("~", "~ noisy (IQR/median > 10%)"), ("≈", "≈ contended or beside busy neighbours (other processes used the cores)"),
                       ("OOM†", "OOM† inferred, not run"), ("n/a", "n/a unsupported")):
        if mark in texts:
            notes.append(note)
    return rows, [" · ".join(notes)]

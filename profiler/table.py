"""The end-of-sweep table in the terminal: mixers x lengths per mode, time, peak memory and the
time ratio to the baseline. Formatting and failure texts are the report's
(:mod:`reports.metrics`), so the terminal and the report say the same thing about a cell."""

from __future__ import annotations

from profiler.cases import ALL_MODES
from reports.metrics import failure_text, format_bytes, format_time
from reports.tables import resolve_baseline

__all__ = ["print_table"]


def _text(r: dict, base: dict | None) -> str:
    if r["status"] != "ok":
        return failure_text(r)
    held = r.get("state_bytes") if r.get("mode") == "decode" else r.get("mem_peak_bytes")  # decode: the state
    text = f"{format_time(r.get('time_median_s'))} · {format_bytes(held)}"
    if base is not None and base is not r and base["status"] == "ok" and base.get("time_median_s") and r.get("time_median_s"):
        text += f" ({r['time_median_s'] / base['time_median_s']:.2f}x)"
    if r.get("noisy"):
        text += " ~"
    return text


def print_table(records: list[dict], baseline: str | None, console) -> None:
    """One rich table per mode over the cell records."""
    from rich.markup import escape
    from rich.table import Table

    cells = [r for r in records if r.get("kind", "cell") == "cell"]
    if not cells:
        return
    lengths = sorted({r["T"] for r in cells})
    for mode in [m for m in ALL_MODES if any(r["mode"] == m for r in cells)]:
        by = {(r["label"], r["T"]): r for r in cells if r["mode"] == mode}
        labels = list(dict.fromkeys(r["label"] for r in cells if r["mode"] == mode))
        base_label = resolve_baseline(labels, baseline) if baseline else None
        what = "time per token · state held" if mode == "decode" else "median time · peak memory"
        title = f"{mode}: {what}" + (f" (time ratio to {escape(base_label)})" if base_label else "")
        table = Table(title=title, title_justify="left")
        table.add_column("mixer", no_wrap=True, min_width=max(len(l) for l in labels))
        for T in lengths:
            table.add_column(f"T={T}", justify="right")
        for label in labels:
            row = [label]
            for T in lengths:
                r = by.get((label, T))
                row.append("" if r is None else _text(r, by.get((base_label, T)) if base_label else None))
            table.add_row(*[escape(t) for t in row])
        console.print(table)
    console.print("OOM† = predicted or after a shorter OOM · ~ = noisy (IQR/median > 10%) · n/a = unsupported",
                  highlight=False)

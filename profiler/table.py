"""The end-of-sweep table in the terminal: mixers x lengths per mode, time, peak memory (a decode
cell: the state it holds) and the time ratio to the baseline. Each cell's text and the legend are
:mod:`reports.endtable`'s (the report's marks: ``≈`` busy machine, ``~`` noisy, and its failure
texts), so the terminal and the report say the same thing about a cell."""

from __future__ import annotations

from profiler.cases import ALL_MODES
from reports.cells import resolve_baseline
from reports.endtable import cell_text, legend

__all__ = ["print_table"]


def print_table(records: list[dict], baseline: str | None, console) -> None:
    """One rich table per mode over the cell records, then the legend of the marks shown."""
    from rich.markup import escape
    from rich.table import Table

    cells = [r for r in records if r.get("kind", "cell") == "cell"]
    if not cells:
        return
    lengths = sorted({r["T"] for r in cells})
    shown: list[str] = []
    for mode in [m for m in ALL_MODES if any(r["mode"] == m for r in cells)]:
        by = {(r["label"], r["T"]): r for r in cells if r["mode"] == mode}
        labels = list(dict.fromkeys(r["label"] for r in cells if r["mode"] == mode))
        base_label = resolve_baseline(labels, baseline)
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
                row.append("" if r is None else cell_text(r, by.get((base_label, T)) if base_label else None))
            shown += row[1:]
            table.add_row(*[escape(t) for t in row])
        console.print(table)
    notes = legend(shown)
    if notes:
        console.print(" · ".join(notes), highlight=False)

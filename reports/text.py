"""Tables as text for the terminal and for pipes: ``table``, ``plain``, ``md``, ``csv``, ``json``.

One renderer for every table the CLI prints (``zoo list``, ``zoo info``, the profiler's end table),
so they all follow the same rules:

* ``table`` (the default on a terminal) fits the terminal's width: columns are never wrapped,
  names never cut; columns the caller marks as cuttable (a paper title) are shortened with "…",
  then optional columns are left out in the caller's order, and a footer says which.
* ``plain`` (the default when stdout is not a terminal): the same aligned layout in ASCII, one
  record per line, nothing cut unless a width is given (``COLUMNS``), so ``| grep`` and ``| cat``
  read whole rows.
* ``md``, ``csv`` and ``json`` are data: every column, every character, no title or footer.

Imports neither torch nor zoo.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from reports.errors import ReportError

__all__ = [
    "TABLE_FORMATS",
    "parse_table_format",
    "resolve_table_format",
    "terminal_width",
    "render_table",
    "render_info",
]

TABLE_FORMATS = ("table", "plain", "md", "csv", "json")
CUT_MIN = 16  # a cuttable column keeps at least this many characters (or its header's width)
_GAP = "  "


def parse_table_format(fmt: str | None, option: str = "--format") -> str:
    """'auto' (or None) stays 'auto'; a known name is returned lower-case; anything else raises."""
    value = (fmt or "auto").strip().lower()
    value = {"markdown": "md", "text": "plain", "txt": "plain"}.get(value, value)
    if value == "auto" or value in TABLE_FORMATS:
        return value
    raise ReportError(f"{option}: expected one of auto, {', '.join(TABLE_FORMATS)}; got {fmt!r}")


def resolve_table_format(fmt: str | None, is_terminal: bool, option: str = "--format") -> str:
    """The format to print in: 'auto' is ``table`` on a terminal and ``plain`` in a pipe."""
    value = parse_table_format(fmt, option)
    if value == "auto":
        return "table" if is_terminal else "plain"
    return value


def terminal_width(fmt: str) -> int | None:
    """Width to fit: ``COLUMNS`` when set; else for ``table`` the terminal's (80 if unknown), for
    ``plain`` the width of the terminal stderr is on (``zoo list | cat`` is read there) and no
    limit when there is none (a file, a CI log); None for the data formats."""
    columns = os.environ.get("COLUMNS", "")
    explicit = int(columns) if columns.isdigit() and int(columns) > 0 else None
    if fmt == "table":
        return explicit or shutil.get_terminal_size((80, 24)).columns
    if fmt == "plain":
        if explicit:
            return explicit
        try:
            return os.get_terminal_size(2).columns if os.isatty(2) else None
        except (OSError, ValueError):
            return None
    return None


def _wrapped(text: str, width: int | None, indent: str = "") -> list[str]:
    if not width or width - len(indent) < CUT_MIN:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=False) or [""]


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not _is_missing(v)


def _rows_of(rows: Any) -> list[dict[str, Any]]:
    if hasattr(rows, "to_dict"):  # a pandas DataFrame (no pandas import needed here)
        return [dict(r) for r in rows.to_dict(orient="records")]
    return [dict(r) for r in rows]


def _columns_of(rows: list[dict[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    out: dict[str, None] = {}
    for row in rows:
        out.update(dict.fromkeys(row))
    return list(out)


def _cell_text(v: Any, missing: str) -> str:
    if _is_missing(v):
        return missing
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return " ".join(str(v).split())  # one line per record, whatever the value holds


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


@dataclass
class _Layout:
    columns: list[str]
    widths: dict[str, int]
    dropped: list[str]


def _fit(natural: dict[str, int], minimum: dict[str, int], columns: list[str],
         width: int | None, drop: Sequence[str]) -> _Layout:
    """Column widths within ``width``: shrink cuttable columns, then drop optional ones in order."""
    shown = list(columns)
    dropped: list[str] = []

    def total(widths: Mapping[str, int]) -> int:
        return sum(widths[c] for c in shown) + len(_GAP) * (len(shown) - 1)

    if width is None or total(natural) <= width:
        return _Layout(shown, dict(natural), dropped)
    for name in [c for c in drop if c in shown]:
        if total(minimum) <= width:
            break
        shown.remove(name)
        dropped.append(name)
    widths = {c: minimum[c] for c in shown}
    spare = width - total(widths)
    for c in shown:  # give the room left back to cuttable columns, in column order
        if spare <= 0:
            break
        extra = min(natural[c] - widths[c], spare)
        widths[c] += extra
        spare -= extra
    return _Layout(shown, widths, dropped)


def _aligned(rows: list[dict[str, Any]], columns: list[str], fmt: str, width: int | None,
             cut: Sequence[str], drop: Sequence[str], wrap: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Lines of the aligned layout (header, rule, rows) and the columns left out. ``wrap``
    columns (prose) break at spaces onto continuation lines instead of being cut."""
    missing = "–" if fmt == "table" else "-"
    texts = [{c: _cell_text(r.get(c), missing) for c in columns} for r in rows]
    numeric = {c: bool(rows) and all(_is_number(r.get(c)) or _is_missing(r.get(c)) for r in rows) for c in columns}
    natural = {c: max([len(c)] + [len(t[c]) for t in texts]) for c in columns}
    shrinkable = set(cut) | set(wrap)
    minimum = {c: min(natural[c], max(len(c), CUT_MIN)) if c in shrinkable else natural[c] for c in columns}
    layout = _fit(natural, minimum, columns, width, drop)

    def lines(values: Mapping[str, str]) -> list[str]:
        cells = {}
        for c in layout.columns:
            w = layout.widths[c]
            cells[c] = (textwrap.wrap(values[c], w, break_long_words=False) or [""]) if c in wrap else [_cut(values[c], w)]
        out = []
        for i in range(max(len(v) for v in cells.values())):
            parts = []
            for c in layout.columns:
                text = cells[c][i] if i < len(cells[c]) else ""
                parts.append(text.rjust(layout.widths[c]) if numeric[c] else text.ljust(layout.widths[c]))
            out.append(_GAP.join(parts).rstrip())
        return out

    rule = "─" if fmt == "table" else "-"
    out = lines({c: c for c in layout.columns}) + [_GAP.join(rule * layout.widths[c] for c in layout.columns)]
    for t in texts:
        out += lines(t)
    return out, layout.dropped


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def esc(v: Any) -> str:
        return _cell_text(v, "").replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if _is_missing(r.get(c)) else r.get(c) for c in columns])
    return buf.getvalue().rstrip("\n")


def _json_value(v: Any) -> Any:
    if _is_missing(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalars
        return _json_value(v.item())
    return v if isinstance(v, (str, int, float, bool)) else str(v)


def to_json(data: Any) -> str:
    """JSON with NaN as null and anything unknown as its text."""
    return json.dumps(_json_value(data), indent=2, ensure_ascii=False)


def render_table(
    rows: Any,
    fmt: str = "plain",
    *,
    columns: Sequence[str] | None = None,
    title: str = "",
    width: int | None = None,
    cut: Sequence[str] = (),
    drop: Sequence[str] = (),
    wrap: Sequence[str] = (),
    notes: Iterable[str] = (),
    hint: str = "",
) -> str:
    """A list of dicts (or a DataFrame) as text in ``fmt`` (one of :data:`TABLE_FORMATS`).

    ``columns``: which and in what order (default: every key, first-seen order). For ``table`` and
    ``plain``: ``title`` above and ``notes`` below; ``width`` the line width to fit (None: no
    limit); ``cut`` columns that may be shortened with "…"; ``wrap`` prose columns that may break
    at spaces onto continuation lines; ``drop`` columns that may be left out, first listed first,
    when the rest does not fit; ``hint`` says where the left-out columns can be seen. Other
    columns are never cut or wrapped (a line may then exceed ``width``).
    """
    fmt = parse_table_format(fmt)
    if fmt == "auto":
        raise ReportError("render_table: resolve 'auto' first (resolve_table_format)")
    rows = _rows_of(rows)
    cols = _columns_of(rows, columns)
    if fmt == "md":
        return _markdown(rows, cols)
    if fmt == "csv":
        return _csv(rows, cols)
    if fmt == "json":
        return to_json([{c: r.get(c) for c in cols} for r in rows])
    lines, dropped = _aligned(rows, cols, fmt, width, cut, drop, wrap)
    out = ([title] if title else []) + lines
    footer = list(notes)
    if dropped:
        where = f" ({hint})" if hint else ""
        footer.append(f"not shown at {width} columns: {', '.join(dropped)}{where}")
    for note in footer:
        out += _wrapped(note, width, "  ")
    return "\n".join(out)


def render_info(info: Mapping[str, Any], fmt: str = "plain", width: int | None = None) -> str:
    """One mixer's description (the dict ``zoo.catalog.mixer_info`` returns): a heading, the spec
    as ``key value`` lines, the config fields as a table, the parameter and FLOP counts.
    ``csv`` gives the config fields table; ``json`` the whole dict."""
    fmt = parse_table_format(fmt)
    fields = list(info.get("config", []))
    if fmt == "json":
        return to_json(info)
    if fmt == "csv":
        return _csv(fields, _columns_of(fields, None))
    heading = f"{info['name']}: {info['title']} ({info['year']}, arXiv {info.get('arxiv') or '-'})"
    pairs = dict(info.get("spec", {}))
    pairs.update(info.get("counts", {}))
    if fmt == "md":
        lines = [f"## {heading}", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_cell_text(v, '-').replace('|', chr(92) + '|')} |" for k, v in pairs.items()]
        return "\n".join(lines + ["", f"**{info.get('config_class', 'config')} fields**", "",
                                  _markdown(fields, _columns_of(fields, None))])
    key_width = max([len(k) for k in pairs] + [0])
    lines = _wrapped(heading, width, "  ")
    for k, v in pairs.items():
        text = _cell_text(v, "-")
        room = width - key_width - 4 if width else None
        parts = textwrap.wrap(text, room, break_long_words=False) if room and room >= CUT_MIN else [text]
        lines += [f"  {(k if i == 0 else '').ljust(key_width)}  {part}" for i, part in enumerate(parts or [""])]
    table = render_table(fields, fmt, title=f"{info.get('config_class', 'config')} fields", width=width,
                         cut=("default",), wrap=("meaning",))
    return "\n".join(lines + ["", table])

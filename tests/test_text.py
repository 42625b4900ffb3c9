"""reports/text.py: the one table renderer behind `zoo list`, `zoo info` and the profiler's end table."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from reports.errors import ReportError
from reports.text import parse_table_format, render_table, resolve_table_format

ROWS = [
    {"name": "pyramidion_block", "paper": "Sparsifying Transformer Models with Trainable Representation Pooling",
     "year": 2022, "time": "O(T)", "ms": 12.5},
    {"name": "softmax", "paper": "Attention Is All You Need", "year": 2017, "time": "O(T^2)", "ms": float("nan")},
]


def test_auto_is_table_on_a_terminal_and_plain_in_a_pipe():
    assert resolve_table_format("auto", is_terminal=True) == "table"
    assert resolve_table_format("auto", is_terminal=False) == "plain"
    assert resolve_table_format("markdown", is_terminal=True) == "md"
    with pytest.raises(ReportError, match="--format: expected one of auto, table, plain, md, csv, json; got 'html'"):
        parse_table_format("html")


def test_narrow_width_cuts_cuttable_columns_then_drops_optional_ones_never_names():
    text = render_table(ROWS, "table", width=50, cut=("paper",), drop=("year", "paper"), hint="see more")
    lines = text.splitlines()
    assert all(len(line) <= 50 for line in lines)
    assert lines[2].startswith("pyramidion_block") and "…" in lines[2]  # title cut, name whole
    assert "year" not in lines[0] and "not shown at 50 columns: year (see more)" in text
    narrow = render_table(ROWS, "table", width=30, cut=("paper",), drop=("year", "paper"))
    assert narrow.splitlines()[0].split() == ["name", "time", "ms"]
    assert "not shown at 30 columns: year,\n  paper" in narrow  # the footer wraps within the width too


def test_too_narrow_for_the_kept_columns_overflows_instead_of_wrapping():
    text = render_table(ROWS, "plain", width=10)
    assert text.splitlines()[2].startswith("pyramidion_block  Sparsifying Transformer Models with Trainable")


def test_plain_without_width_keeps_everything_and_aligns_numbers_right():
    text = render_table(pd.DataFrame(ROWS), "plain", title="two")
    lines = text.splitlines()
    assert lines[0] == "two" and set(lines[2]) == {"-", " "}
    assert ROWS[0]["paper"] in text
    assert lines[3].endswith("12.5") and lines[4].endswith("-")  # NaN reads '-', right-aligned column


def test_wrap_breaks_prose_at_spaces_onto_continuation_lines():
    rows = [{"field": "num_segments", "meaning": "segments per sequence: segment length ceil(N / num_segments)"}]
    lines = render_table(rows, "table", width=40, wrap=("meaning",)).splitlines()
    assert len(lines) > 3 and all(len(line) <= 40 for line in lines)
    assert lines[2].startswith("num_segments") and lines[3].startswith(" " * len("num_segments"))
    assert " ".join(line[len("num_segments") + 2:].strip() for line in lines[2:]) == rows[0]["meaning"]


def test_data_formats_keep_every_column_and_character():
    md = render_table(ROWS, "md", width=20, cut=("paper",), drop=("year",))
    assert md.splitlines()[0] == "| name | paper | year | time | ms |" and ROWS[0]["paper"] in md
    csv_text = render_table(ROWS, "csv")
    assert csv_text.splitlines()[2] == "softmax,Attention Is All You Need,2017,O(T^2),"
    data = json.loads(render_table(ROWS, "json"))
    assert data[1]["ms"] is None and data[0]["year"] == 2022 and math.isclose(data[0]["ms"], 12.5)
    assert render_table([{"a": "x|y"}], "md").splitlines()[2] == "| x\\|y |"


def test_end_table_rows_mark_unclean_timings_and_failures():
    from reports.endtable import end_table_rows

    def cell(label, T, status="ok", t=1e-3, **kw):
        return {"kind": "cell", "label": label, "mixer": label, "mode": "forward", "T": T, "threads": 2,
                "status": status, "time_median_s": t if status == "ok" else None, "mem_peak_bytes": 2.0**20, **kw}

    records = [cell("softmax", 512), cell("softmax", 1024, "oom", inferred=True),
               cell("ponet", 512, t=5e-4, contended=True), cell("ponet", 1024, t=9e-4, noisy=True)]
    rows, notes = end_table_rows(records, "softmax")
    assert rows[0] == {"mixer": "softmax", "mode": "forward", "T=512": "1 ms · 1 MiB", "T=1024": "OOM†"}
    assert rows[1]["T=512"] == "≈500 µs · 1 MiB (0.50×)" and rows[1]["T=1024"] == "~900 µs · 1 MiB"
    assert "≈ contended" in notes[0] and "~ noisy" in notes[0] and "OOM† inferred" in notes[0]
    text = render_table(rows, "table", width=80, notes=notes)
    assert text.splitlines()[0].split() == ["mixer", "mode", "T=512", "T=1024"]
    # beside busy neighbours (and noisy too): the busy-machine mark wins, as in the report's tables
    rows, _ = end_table_rows([cell("softmax", 512), cell("ponet", 512, t=5e-4, neighbours=True, noisy=True)], "softmax")
    assert rows[1]["T=512"] == "≈500 µs · 1 MiB (0.50×)"


def test_the_profilers_end_table_marks_busy_machine_timings_as_the_report_does():
    """zoo profile's terminal table (profiler.table) had marked noisy cells only: a sweep whose 200
    cells were all timed beside a busy process printed them unmarked."""
    from rich.console import Console

    from profiler.table import print_table

    def cell(label, T, status="ok", t=1e-3, **kw):
        return {"kind": "cell", "label": label, "mixer": label, "mode": "forward", "T": T, "threads": 1,
                "status": status, "time_median_s": t if status == "ok" else None, "mem_peak_bytes": 2.0**20, **kw}

    records = [cell("softmax", 512, neighbours=True), cell("ponet", 512, t=5e-4, neighbours=True),
               cell("softmax", 1024, contended=True), cell("ponet", 1024, t=9e-4, noisy=True),
               cell("fnet", 512, t=2e-4), cell("fnet", 1024, "oom", inferred=True)]
    console = Console(record=True, width=200)
    print_table(records, "softmax", console)
    text = console.export_text()
    assert "≈1 ms · 1 MiB" in text and "≈500 µs · 1 MiB (0.50×)" in text  # beside busy neighbours
    assert "~900 µs · 1 MiB" in text and "200 µs · 1 MiB (0.20×)" in text and "OOM†" in text
    assert "≈ contended or beside busy neighbours" in text and "~ noisy" in text and "OOM† inferred" in text
    # the legend names only the marks the table shows
    console = Console(record=True, width=200)
    print_table([cell("softmax", 512), cell("ponet", 512, t=5e-4)], "softmax", console)
    assert "≈" not in console.export_text() and "~" not in console.export_text()


def test_failure_text_reads_a_missing_inferred_flag_as_not_inferred():
    """A pandas row of a record without ``inferred`` holds NaN there, and bool(NaN) is True: an
    observed OOM had read as inferred (OOM†)."""
    import pandas as pd

    from reports.cells import failure_text

    row = pd.DataFrame([{"status": "oom", "reason": "out of memory"}, {"status": "oom", "inferred": True}]).iloc[0]
    assert failure_text(row) == "OOM"
    assert failure_text({"status": "oom", "inferred": True}) == "OOM†"
    assert failure_text({"status": "skipped", "reason": "after an OOM at T=2048"}) == "OOM†"
    assert failure_text({"status": "killed"}) == "killed" and failure_text({"status": "unsupported"}) == "n/a"

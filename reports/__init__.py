"""Reports from profile records: paper-style tables, scaling plots, exponent fits, the report folder.

Reads JSON Lines written by ``zoo profile`` and ``zoo fidelity`` (``docs/RECORDS.md``) with the
standard library and pandas; draws with matplotlib (Agg). Imports neither torch nor zoo, so a
report can be built anywhere the records can be copied to.

    from reports import build_report, read_profile
    build_report(["runs/cpu.jsonl"], "reports-out/cpu")       # report.html, report.md, figures/, summary.csv
    cells = read_profile("runs/cpu.jsonl").cells                # tidy DataFrame, one row per cell
"""

from reports.cells import SERIES_FIELDS, is_clean, is_contended, is_noisy, series_identity
from reports.crossover import Crossover, find_crossover
from reports.endtable import end_table_rows
from reports.errors import ReportError
from reports.fit import (
    CROSSOVER_CAP,
    FLAG_THRESHOLD,
    MIN_FIT_LENGTHS,
    Fit,
    SeriesFit,
    Verdict,
    fit_scaling,
    fit_series,
    judge_exponent,
    local_slopes,
)
from reports.formats import format_bytes, format_length, format_number, format_ratio, format_time, format_tokens
from reports.load import Profile, read_profile, read_profiles
from reports.render import Report, build_report, parse_formats
from reports.tables import consumption_table, consumption_tables, to_html, to_latex, to_markdown
from reports.text import TABLE_FORMATS, parse_table_format, render_table, resolve_table_format, terminal_width

__all__ = [
    "SERIES_FIELDS",
    "is_clean",
    "is_contended",
    "is_noisy",
    "series_identity",
    "ReportError",
    "CROSSOVER_CAP",
    "FLAG_THRESHOLD",
    "MIN_FIT_LENGTHS",
    "Crossover",
    "Fit",
    "SeriesFit",
    "Verdict",
    "find_crossover",
    "fit_scaling",
    "fit_series",
    "judge_exponent",
    "local_slopes",
    "format_bytes",
    "format_length",
    "format_number",
    "format_ratio",
    "format_time",
    "format_tokens",
    "Profile",
    "read_profile",
    "read_profiles",
    "Report",
    "build_report",
    "parse_formats",
    "consumption_table",
    "consumption_tables",
    "to_html",
    "to_latex",
    "to_markdown",
    "end_table_rows",
    "TABLE_FORMATS",
    "parse_table_format",
    "render_table",
    "resolve_table_format",
    "terminal_width",
]

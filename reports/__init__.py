"""Reports from profile records: paper-style tables, scaling plots, exponent fits, the report folder.

Reads JSON Lines written by ``zoo profile`` and ``zoo fidelity`` (``docs/RECORDS.md``) with the
standard library and pandas; draws with matplotlib (Agg). Imports neither torch nor zoo, so a
report can be built anywhere the records can be copied to.

    from reports import build_report, read_profile
    build_report(["runs/cpu.jsonl"], "reports-out/cpu")       # report.html, report.md, figures/, summary.csv
    cells = read_profile("runs/cpu.jsonl").cells                # tidy DataFrame, one row per cell
"""

from reports.errors import ReportError
from reports.fit import Crossover, Fit, find_crossover, fit_scaling, local_slopes
from reports.load import Profile, read_profile, read_profiles
from reports.render import Report, build_report, parse_formats
from reports.tables import consumption_table, consumption_tables, to_html, to_latex, to_markdown

__all__ = [
    "ReportError",
    "Crossover",
    "Fit",
    "find_crossover",
    "fit_scaling",
    "local_slopes",
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
]

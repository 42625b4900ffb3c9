"""Read profile records (JSON Lines, ``docs/RECORDS.md``) into pandas tables, one :class:`Profile`
per file.

A file is a *profile* when at least one line is a JSON object with ``kind`` and ``schema``. Lines
that are not (a partial last line of an interrupted sweep, a corrupted byte, a record missing a
required key) are skipped and counted in :attr:`Profile.bad_lines`; they never stop a report.
Records of an unknown schema version, a missing file and a file with no record at all raise
:class:`~reports.errors.ReportError` with a message naming the file.

A resumed sweep appends a new header and re-measured cells to the same file: for cells with the
same ``key`` the last record wins (counted in :attr:`Profile.superseded`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from reports.cells import SERIES_FIELDS, series_identity
from reports.errors import ReportError

__all__ = [
    "HELD",
    "SCHEMA_VERSION",
    "STATUSES",
    "Profile",
    "read_profile",
    "read_profiles",
    "cell_identity",
    "join_columns",
    "SERIES_KEYS",
    "series_id",
    "parse_record",
]

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "killed", "timeout", "unsupported", "error", "skipped")
HELD = "held"  # the kind of a round-1 journal entry (profiler.sweep); its cell record supersedes it

# Columns every loaded table has (a key absent from a record reads as null), in RECORDS.md order.
CELL_COLUMNS = [
    "run_id", "key", "mixer", "label", "config", "scope", "mode", "T", "batch", "dim", "heads",
    "depth", "dtype", "device", "causal", "status", "reason", "inferred", "time_median_s",
    "time_iqr_s", "time_p20_s", "time_p80_s", "time_n", "time_samples", "noisy", "steps_per_s",
    "mem_peak_bytes", "mem_abs_peak_bytes", "mem_method", "mem_tensor_peak_bytes", "mem_disagree",
    "mem_predicted_bytes", "flops_analytic", "flops_counted", "flops_disagree", "params",
    "compute_dtype", "sdpa_backend", "checkpointing", "threads", "started_at", "wall_s", "cpu_heap",
    "time_block", "contended", "contended_samples", "other_cpu", "pad_fraction", "compile", "class_from",
]
FIT_COLUMNS = ["run_id", "label", "mixer", "scope", "mode", "metric", "k", "k_lo", "k_hi", "model",
               "lengths", "declared", "flagged"]
FIDELITY_COLUMNS = ["run_id", "mixer", "label", "config", "T", "batch", "dim", "heads", "dtype",
                    "causal", "status", "reason", "rel_error", "rel_error_std", "cosine", "n_seeds"]

_REQUIRED = {
    "header": (),
    "cell": ("mixer", "T", "status", "scope", "mode"),
    "fit": ("label", "metric", "k"),
    "fidelity": ("mixer", "T", "status"),
}
_NUMERIC_CELL = ["T", "batch", "dim", "heads", "depth", "pad_fraction", "time_median_s", "time_iqr_s", "time_p20_s",
                 "time_p80_s", "time_n", "steps_per_s", "mem_peak_bytes", "mem_abs_peak_bytes",
                 "mem_tensor_peak_bytes", "mem_predicted_bytes", "flops_analytic", "flops_counted",
                 "params", "threads", "wall_s", "time_block",
                 "contended_samples", "other_cpu", "class_from"]
_NUMERIC_FIDELITY = ["T", "batch", "dim", "heads", "rel_error", "rel_error_std", "cosine", "n_seeds"]
_NUMERIC_FIT = ["k", "k_lo", "k_hi", "declared"]

# What makes two cells "the same measurement" across runs (devices differ by design).
CELL_IDENTITY = ["label", "scope", "mode", "T", "batch", "dim", "heads", "depth", "dtype", "causal", "pad_fraction",
                 "compile"]
# A series: the cells of one measurement that differ only in T (the profiler's OOM frontier and
# memory extrapolation, its fit records and the report's fits all group by this).
# One source of truth for series identity: reports.cells (aliases kept for callers of these names).
SERIES_KEYS = SERIES_FIELDS
series_id = series_identity


def parse_record(line: str | bytes) -> dict[str, Any] | None:
    """One JSONL line as a record (a JSON object with ``kind`` and ``schema``), else None. The one
    parser of profile lines: the report's reader and the profiler's resume both use it."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "kind" not in record or "schema" not in record:
        return None
    return record


@dataclass
class Profile:
    """The records of one JSONL file, as tidy DataFrames (one row per record)."""

    path: Path
    name: str
    headers: list[dict[str, Any]]
    cells: pd.DataFrame
    fits: pd.DataFrame
    fidelity: pd.DataFrame
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of skipped lines
    ignored: int = 0  # records of a kind this reader does not know (newer writers)
    cut: list[str] = field(default_factory=list)  # keys journalled as "held" that never got a cell record
    superseded: int = 0  # cell / fidelity records replaced by a later one for the same cell (resume)

    @property
    def env(self) -> dict[str, Any]:
        """The environment of the last header (a resumed run appends one)."""
        for header in reversed(self.headers):
            if isinstance(header.get("env"), dict):
                return header["env"]
        return {}

    @property
    def settings(self) -> dict[str, Any]:
        for header in reversed(self.headers):
            if isinstance(header.get("settings"), dict):
                return header["settings"]
        return {}

    @property
    def contention(self) -> dict[str, Any]:
        """The pre-flight reading of the last header that has one (``{}`` when none: not a CPU sweep
        with a load probe, or older than it)."""
        for header in reversed(self.headers):
            if isinstance(header.get("contention"), dict):
                return header["contention"]
        return {}

    @property
    def commands(self) -> list[str]:
        """Every command line that wrote into this file, in order, without repeats."""
        out: list[str] = []
        for header in self.headers:
            command = header.get("command")
            if isinstance(command, list):
                command = " ".join(map(str, command))
            if command and command not in out:
                out.append(str(command))
        return out

    @property
    def has_cells(self) -> bool:
        return not self.cells.empty


def _frame(rows: list[dict[str, Any]], columns: list[str], numeric: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=columns)
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    extra = [c for c in frame.columns if c not in columns]
    return frame[columns + extra].reset_index(drop=True)


def _env_ids(headers: list[dict[str, Any]]) -> dict[Any, str]:
    """run_id -> environment fingerprint (device name + torch version) for ratio grouping."""
    out = {}
    for header in headers:
        env = header.get("env") if isinstance(header.get("env"), dict) else {}
        out[header.get("run_id")] = f"{env.get('device_name') or '?'} | torch {env.get('torch') or '?'}"
    return out


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def join_columns(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One string per row joining ``columns`` (missing values read as ''), for grouping."""
    if frame.empty:
        return pd.Series([], dtype=object, index=frame.index)
    parts = [frame[c].map(_text) if c in frame.columns else pd.Series("", index=frame.index) for c in columns]
    out = parts[0]
    for part in parts[1:]:
        out = out + "|" + part
    return out


def cell_identity(frame: pd.DataFrame) -> pd.Series:
    """One string per row: the cell's measurement identity (label, shape, mode, dtype), the same
    across devices; what "common cells" of two runs share."""
    return join_columns(frame, CELL_IDENTITY)


def read_profile(path: str | Path, name: str | None = None) -> Profile:
    """Load one JSONL profile. Raises :class:`ReportError` for a missing file, a file with no record
    and records of an unknown schema version; skips and counts partial or corrupted lines."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such file")
    if path.is_dir():
        raise ReportError(f"{path}: is a directory; expected a .jsonl profile written by `zoo profile`")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read ({exc.strerror or exc})") from None

    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _REQUIRED}
    bad: list[int] = []
    schemas: dict[Any, int] = {}
    ignored = 0
    held: list[Any] = []
    first_line = ""
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        first_line = first_line or line
        record = parse_record(line)
        if record is None:
            bad.append(number)
            continue
        schemas[record["schema"]] = schemas.get(record["schema"], 0) + 1
        if record["schema"] != SCHEMA_VERSION:
            continue
        kind = record["kind"]
        if kind == HELD:
            held.append(record.get("key"))
            continue
        if kind not in _REQUIRED:
            ignored += 1
            continue
        if any(record.get(k) is None for k in _REQUIRED[kind]):
            bad.append(number)
            continue
        if kind in ("cell", "fidelity") and record["status"] not in STATUSES:
            bad.append(number)
            continue
        by_kind[kind].append(record)

    if not schemas:
        snippet = first_line[:60] + ("..." if len(first_line) > 60 else "")
        what = f"first line: {snippet!r}" if snippet else "the file is empty"
        raise ReportError(
            f"{path}: not a zoo profile: no line is a JSON record with 'kind' and 'schema' ({what})"
        )
    unknown = {s: n for s, n in schemas.items() if s != SCHEMA_VERSION}
    if unknown:
        found = ", ".join(f"schema {s!r} ({n} records)" for s, n in unknown.items())
        raise ReportError(
            f"{path}: unknown record schema: {found}; this zoo reads schema {SCHEMA_VERSION} "
            "(regenerate the profile with this version of zoo, or upgrade zoo)"
        )

    headers = by_kind["header"]
    cells = _frame(by_kind["cell"], CELL_COLUMNS, _NUMERIC_CELL)
    superseded = 0
    if not cells.empty:
        cells["label"] = cells["label"].fillna(cells["mixer"])
        cells["pad_fraction"] = cells["pad_fraction"].fillna(0.0)  # records older than the field
        cells["compile"] = cells["compile"].fillna("")  # eager; "inductor" etc. when compiled
        env_ids = _env_ids(headers)
        cells["env_id"] = cells["run_id"].map(lambda run_id: env_ids.get(run_id, "? | torch ?"))
        if "gpu" in cells.columns:  # a fanned-out sweep: the GPU that ran each cell, not the submitter's
            gpu = cells["gpu"].map(_text)
            rest = cells["env_id"].str.split(" | ", n=1, regex=False).str[1]
            cells["env_id"] = cells["env_id"].where(gpu == "", gpu + " | " + rest)
        ident = cells["key"].map(_text).where(cells["key"].notna(), join_columns(cells, CELL_IDENTITY + ["device"]))
        keep = ~ident.duplicated(keep="last")
        superseded = int((~keep).sum())
        cells = cells[keep].reset_index(drop=True)
        cells["T"] = cells["T"].astype(int)
    else:
        cells["env_id"] = None
    fidelity = _frame(by_kind["fidelity"], FIDELITY_COLUMNS, _NUMERIC_FIDELITY)
    if not fidelity.empty:
        fidelity["label"] = fidelity["label"].fillna(fidelity["mixer"])
        # `zoo fidelity --out` appends: a cell measured again replaces the earlier record
        ident = join_columns(fidelity, ["label", "T", "batch", "dim", "heads", "dtype", "causal"])
        keep = ~ident.duplicated(keep="last")
        superseded += int((~keep).sum())
        fidelity = fidelity[keep].reset_index(drop=True)
        fidelity["T"] = fidelity["T"].astype(int)
    fits = _frame(by_kind["fit"], FIT_COLUMNS, _NUMERIC_FIT)
    return Profile(
        path=path,
        name=name or path.stem,
        headers=headers,
        cells=cells,
        fits=fits,
        fidelity=fidelity,
        bad_lines=bad,
        ignored=ignored,
        superseded=superseded,
        cut=_cut(held, by_kind["cell"]),
    )


def _cut(held: list[Any], cells: list[dict[str, Any]]) -> list[str]:
    """The held keys with no cell record in the file: cells of a sweep killed before writing them."""
    written = {c.get("key") for c in cells}
    return sorted({str(k) for k in held if k is not None and k not in written})


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) == len(names):
        return names
    names = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def read_profiles(paths: Iterable[str | Path]) -> list[Profile]:
    """Load several files; run names are the file stems (made unique with the parent folder)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ReportError("no profile given: pass one or more .jsonl files written by `zoo profile`")
    return [read_profile(p, name) for p, name in zip(paths, _unique_names(paths))]

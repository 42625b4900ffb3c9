"""What a cell's numbers mean: metrics, units, status labels, groups of comparable cells, and the
style (colour, marker) of each mixer, shared by tables, plots and the rendered report.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reports.cells import SERIES_FIELDS, failure_text, is_clean, is_contended, is_noisy, mixer_of
from reports.formats import format_bytes, format_length, format_number, format_ratio, format_time, format_tokens
from reports.load import join_columns

__all__ = [
    "GROUP_COLUMNS",
    "SHAPE_COLUMNS",
    "group_slug",
    "format_ratio",
    "Metric",
    "TIME",
    "SPEED",
    "MEMORY",
    "MEMORY_CHECK",
    "group_cells",
    "group_title",
    "failure_text",
    "is_oom",
    "mixer_of",
    "mixer_color",
    "label_marker",
    "format_length",
    "format_number",
    "format_bytes",
    "format_time",
    "format_tokens",
    "SERIES_COLUMNS",
    "clean_mask",
    "noisy_mask",
    "contended_mask",
]

# Cells are comparable (one table, one figure, ratios) only within one of these groups. The thread
# count is part of every grouping: it changes the comparison itself (SERIES_FIELDS).
GROUP_COLUMNS = ["env_id", "scope", "mode", "batch", "dim", "heads", "depth", "dtype", "device", "causal",
                 "pad_fraction", "compile", "threads"]
# Across runs (other machines), the same measurement: the group without its environment.
SHAPE_COLUMNS = ["scope", "mode", "batch", "dim", "heads", "depth", "dtype", "causal", "pad_fraction", "compile",
                 "threads"]
# One curve T -> cost (reports.cells.SERIES_FIELDS) and the run it came from.
SERIES_COLUMNS = ["run", *SERIES_FIELDS]


def _rows(cells: pd.DataFrame):
    return (dict(zip(cells.columns, values)) for values in cells.itertuples(index=False, name=None))


def clean_mask(cells: pd.DataFrame) -> pd.Series:
    """ok cells whose timing is neither noisy nor contended (:func:`reports.cells.is_clean`)."""
    return pd.Series([is_clean(r) for r in _rows(cells)], index=cells.index, dtype=bool)


def noisy_mask(cells: pd.DataFrame) -> pd.Series:
    return pd.Series([is_noisy(r) for r in _rows(cells)], index=cells.index, dtype=bool)


def contended_mask(cells: pd.DataFrame) -> pd.Series:
    return pd.Series([is_contended(r) for r in _rows(cells)], index=cells.index, dtype=bool)


@dataclass(frozen=True)
class Metric:
    """A number read from cells: its column, direction and the unit it is shown in."""

    name: str  # "time", "speed", "memory"
    column: str
    higher_is_better: bool = False

    def values(self, cells: pd.DataFrame) -> pd.Series:
        """The metric for ok cells with a positive reading (NaN elsewhere)."""
        v = pd.to_numeric(cells[self.column], errors="coerce")
        if self.name == "speed":  # records written before steps_per_s was filled
            v = v.where(v.notna(), 1.0 / pd.to_numeric(cells["time_median_s"], errors="coerce"))
        return v.where((cells["status"] == "ok") & (v > 0))

    def unit(self, values: pd.Series | list[float]) -> tuple[str, float]:
        """(unit name, divisor) chosen so the typical value reads between 1 and 1000."""
        s = pd.Series(values, dtype=float).dropna()
        typical = float(s.median()) if len(s) else 1.0
        if self.name == "time":
            if typical >= 1.0:
                return "s", 1.0
            return ("ms", 1e-3) if typical >= 1e-3 else ("µs", 1e-6)
        if self.name == "memory":
            for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
                if typical >= scale:
                    return unit, scale
            return "B", 1.0
        return "steps/s", 1.0

    def axis_label(self, scope: str, mode: str, unit: str) -> str:
        if self.name == "memory":
            return f"peak memory ({unit})"
        what = "training step" if mode == "train" else "forward call"
        if self.name == "speed":
            return f"{what}s per second"
        return f"time per {what} ({unit})"


TIME = Metric("time", "time_median_s")
SPEED = Metric("speed", "steps_per_s", higher_is_better=True)
MEMORY = Metric("memory", "mem_peak_bytes")
# the second reading of a cell's memory that an exponent verdict must agree with (CPU, eager: the
# live-tensor peak; null on CUDA, where the peak is the allocator's own count): reports.fit.fit_series
MEMORY_CHECK = "mem_tensor_peak_bytes"


def is_oom(cells: pd.DataFrame) -> pd.Series:
    """Cells that ran out of memory, observed or inferred (predicted, or skipped after an OOM)."""
    reason = cells["reason"].fillna("").astype(str).str.lower()
    return (cells["status"] == "oom") | ((cells["status"] == "skipped") & reason.str.contains("oom"))


def _value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def group_cells(cells: pd.DataFrame, columns: list[str] | None = None) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Split cells into comparable groups: by default same environment, scope, mode, shape, dtype
    and device (:data:`GROUP_COLUMNS`); :data:`SHAPE_COLUMNS` groups the same cells across runs."""
    if cells.empty:
        return []
    columns = columns or GROUP_COLUMNS
    keys = join_columns(cells, columns)
    out = []
    for key in dict.fromkeys(keys):  # first-seen order
        part = cells[keys == key]
        first = part.iloc[0]
        out.append(({c: _value(first[c]) if c in columns and c in part.columns else None for c in GROUP_COLUMNS}, part))
    order = {"train": 0, "forward": 1}
    out.sort(key=lambda g: (str(g[0]["env_id"]), str(g[0]["scope"]), order.get(g[0]["mode"], 2)))
    return out


def group_title(group: dict[str, Any], with_env: bool = False) -> str:
    """'train · model scope (depth 2) · B=32, D=64, 2 heads · fp32 · cpu'."""
    mode = {"train": "training step", "forward": "forward"}.get(group["mode"], str(group["mode"]))
    scope = f"{group['scope']} scope"
    if group.get("depth") is not None and group["scope"] == "model":
        scope += f" (depth {int(group['depth'])})"
    shape = f"B={_int(group['batch'])}, D={_int(group['dim'])}, {_int(group['heads'])} heads"
    parts = [mode, scope, shape, str(group["dtype"])]
    if group.get("device") is not None:
        parts.append(str(group["device"]))
    if str(group.get("causal")).lower() == "true":
        parts.append("causal")
    if group.get("pad_fraction"):
        parts.append(f"last {float(group['pad_fraction']):.0%} padded (masked)")
    if group.get("compile"):
        parts.append(f"torch.compile ({group['compile']})")
    if group.get("threads") is not None:
        parts.append(f"{_int(group['threads'])} thread{'' if _int(group['threads']) == '1' else 's'}")
    if with_env and group.get("env_id"):
        parts.append(str(group["env_id"]))
    return " · ".join(parts)


def _int(v: Any) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


def group_slug(group: dict[str, Any]) -> str:
    """A file-name-safe id of a group: 'train-model-b32-d64-h2-fp32-cpu'."""
    parts = [group["mode"], group["scope"], f"b{_int(group['batch'])}", f"d{_int(group['dim'])}",
             f"h{_int(group['heads'])}", group["dtype"]]
    if group.get("device") is not None:
        parts.append(group["device"])
    if str(group.get("causal")).lower() == "true":
        parts.append("causal")
    if group.get("pad_fraction"):
        parts.append(f"pad{round(100 * float(group['pad_fraction']))}")
    if group.get("compile"):
        parts.append(f"compile_{group['compile']}")
    if group.get("threads") is not None:
        parts.append(f"t{_int(group['threads'])}")
    slug = "-".join(str(p) for p in parts)
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in slug)


# --- style: a colour per mixer, from its name alone ---------------------------------------------
# Ten strong colours (tab10 without its grey, the guide slopes' colour, plus black), then light and
# dark companions (tab20, tab20b). The salt was picked once so that the zoo's twenty mixers (with
# issue 15's mamba2, retnet, gla, deltanet, gated_deltanet, hyena) get distinct colours and the
# PoNet-table set (softmax, performer, nystrom, fnet, ponet) strong ones. A new name may share a
# colour with an old one; its marker (from the full label) still tells the lines apart.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#b5cf6b", "#e7ba52",
)
_SALT = "1849095"
MARKERS = ("o", "s", "^", "D", "v", "P", "<", ">", "p", "h", "*", "d")


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def mixer_color(label: str) -> str:
    """The mixer's colour: the same in every figure and every report, whatever else is plotted."""
    return PALETTE[_hash(f"{_SALT}:{mixer_of(label)}") % len(PALETTE)]


def label_marker(label: str) -> str:
    return MARKERS[_hash(f"marker:{label}") % len(MARKERS)]

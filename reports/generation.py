"""The report's generation section: decode cells (``mode="decode"``) read from the records.

Per group of comparable decode cells (same shape, dtype, device, run), one table row per
causal mixer: its declared state class, ms per generated token and state MB at every context
length T, the fitted exponents of both in T, and the crossovers against the baseline's (softmax's
KV cache): the context from which the mixer is faster per token / holds less state, and stays so.
One figure per group: ms/token and state MB against T on log-log axes, one line per mixer.

Torch-free (pandas, numpy and matplotlib only), like the rest of ``reports/``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from reports.fit import find_crossover
from reports.metrics import GROUP_COLUMNS, Metric, format_length, group_cells, group_title, mixer_color

__all__ = [
    "DECODE_TIME",
    "STATE",
    "GENERATION_NOTE",
    "decode_cells",
    "decode_exponent",
    "generation_tables",
    "plot_generation",
]

DECODE_TIME = Metric("time", "time_median_s")  # seconds per generated token in decode cells
STATE = Metric("memory", "state_bytes")  # bytes held by the generation state
GENERATION_NOTE = (
    "Generation through each causal mixer's state API (`zoo profile --mode decode`): a prompt of T "
    "tokens is prefilled, then one new token is timed at context T + 1 (the state rolled back after "
    "each timed step, so the context does not grow). ms/token is the median over the timed steps; "
    "state MB is what the state's tensors hold at context T + 1 (a KV cache's spare capacity, <= 1/8, "
    "included). k = decode exponent: the log-log slope over the longer half of the measured contexts "
    "(0 = independent of T, 1 = linear). Crossover: the context "
    "from which the mixer is cheaper than the baseline and stays so."
)


def decode_exponent(
    lengths: list[float], values: list[float], samples: list[list[float] | None] | None = None, n_boot: int = 200
) -> tuple[float, float, float] | None:
    """(k, k_lo, k_hi): the decode exponent of a cost in the context length, the least-squares
    log-log slope over the lengths at or above the geometric middle of the measured range (where
    the fixed per-token overhead no longer hides the growth), with a 95% bootstrap interval over
    the raw timing samples when given (else the point itself). None with < 2 such lengths.

    The report's ``a + b T^k`` fit is ill-posed here: a flat series (a constant state) has no
    identifiable k, and the decode question is exactly whether the series is flat.
    """
    import numpy as np

    pts = sorted((float(T), float(v), s) for T, v, s in zip(lengths, values, samples or [None] * len(lengths))
                 if T > 0 and v is not None and math.isfinite(v) and v > 0)
    if len({p[0] for p in pts}) < 2:
        return None
    middle = math.sqrt(pts[0][0] * pts[-1][0])
    upper = [p for p in pts if p[0] >= middle * (1 - 1e-9)]
    if len({p[0] for p in upper}) < 2:
        upper = pts[-2:]
    x = np.log([p[0] for p in upper])
    k = float(np.polyfit(x, np.log([p[1] for p in upper]), 1)[0])
    raw = [np.asarray(p[2], dtype=float) for p in upper if isinstance(p[2], list) and len(p[2]) >= 3]
    if len(raw) != len(upper):
        return k, k, k
    rng = np.random.default_rng(0)
    boot_y = np.stack([np.median(rng.choice(r, size=(n_boot, len(r))), axis=1) for r in raw], axis=1)  # (n_boot, n)
    ks = np.polyfit(x, np.log(boot_y).T, 1)[0]  # (n_boot,)
    lo, hi = np.percentile(ks, [2.5, 97.5])
    return k, float(min(lo, k)), float(max(hi, k))


def decode_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The decode cells of a report's cell table (empty when there are none)."""
    if cells.empty or "mode" not in cells.columns:
        return cells.iloc[0:0]
    return cells[cells["mode"] == "decode"]


def _series(part: pd.DataFrame, label: str, metric: Metric) -> dict[int, float]:
    rows = part[part["label"] == label]
    values = metric.values(rows) if metric.column in rows.columns else pd.Series(dtype=float)
    return {int(T): float(v) for T, v in zip(rows["T"], values) if pd.notna(v)}


def _k(series: dict[int, float]) -> str:
    if len(series) < 3:
        return "–"
    fit = decode_exponent(sorted(series), [series[T] for T in sorted(series)])
    return "–" if fit is None else f"{round(fit[0], 2) + 0.0:.2f}"  # + 0.0: no "-0.00"


def _crossover(series: dict[int, float], base: dict[int, float]) -> str:
    lengths = sorted(set(series) | set(base))
    if not series or not base:
        return "–"
    return find_crossover(lengths, [series.get(T) for T in lengths], [base.get(T) for T in lengths]).text


def _cell_text(part: pd.DataFrame, label: str, T: int) -> str:
    row = part[(part["label"] == label) & (part["T"] == T)]
    if row.empty:
        return ""
    r = row.iloc[0]
    if r["status"] != "ok":
        return "n/a" if r["status"] == "unsupported" else str(r["status"])
    ms, mb = float(r["time_median_s"]) * 1e3, float(r["state_bytes"]) / 2**20
    return f"{ms:.3g} ms · {mb:.3g} MB"


def generation_tables(cells: pd.DataFrame, baseline: str = "softmax") -> list[tuple[str, list[str], list[list[Any]]]]:
    """[(title, columns, rows)] per group of decode cells; [] without decode cells."""
    out = []
    for group, part in group_cells(decode_cells(cells), GROUP_COLUMNS):
        lengths = sorted({int(T) for T in part["T"]})
        labels = list(dict.fromkeys(part["label"]))
        base = baseline if baseline in labels else None
        columns = ["mixer", "state", *[f"T={format_length(T)}" for T in lengths], "k ms/token", "k state",
                   f"faster than {base or 'baseline'} from", f"less state than {base or 'baseline'} from"]
        rows = []
        for label in labels:
            classes = part.loc[part["label"] == label, "state_class"].dropna() if "state_class" in part else []
            t, s = _series(part, label, DECODE_TIME), _series(part, label, STATE)
            cross = ["–", "–"]
            if base and label != base:
                cross = [_crossover(t, _series(part, base, DECODE_TIME)), _crossover(s, _series(part, base, STATE))]
            rows.append([label, classes.iloc[0] if len(classes) else "–",
                         *[_cell_text(part, label, T) for T in lengths], _k(t), _k(s), *cross])
        out.append((f"Generation · {group_title(group)}", columns, rows))
    return out


def plot_generation(part: pd.DataFrame):
    """Figure: ms/token (left) and state MB (right) against T, log-log, one line per mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, scale, ylabel in ((axes[0], DECODE_TIME, 1e-3, "ms per generated token"),
                                      (axes[1], STATE, 2.0**20, "state held (MB)")):
        for label in dict.fromkeys(decode_cells(part)["label"]):
            series = _series(part, label, metric)
            if not series:
                continue
            classes = part.loc[part["label"] == label, "state_class"].dropna()
            tag = f"{label} [{classes.iloc[0]}]" if len(classes) else label
            Ts = sorted(series)
            ax.plot(Ts, [series[T] / scale for T in Ts], marker="o", label=tag, color=mixer_color(label))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, 1.02 + 0.04 * math.ceil(len(labels) / 4)))
    return fig

"""Figures of a sweep (matplotlib, Agg backend; every function returns a Figure, saving is the
caller's business).

* :func:`plot_scaling`: log2 T against time or memory, one line per mixer (colour from the mixer's
  name, see :func:`reports.metrics.mixer_color`), an × where a mixer first ran out of memory
  (placed by extending its last measured slope, dotted), faint O(T), O(T log T), O(T²) guide
  slopes, and below it the local slopes d log y / d log T, where regime changes (caches,
  threads, kernel switches) show. Several runs share the axes: line style tells them apart.
* :func:`plot_fidelity`: relative error against exact softmax attention as T grows.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never a window, whatever the caller's backend (reports run headless)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from reports.fit import local_slopes  # noqa: E402
from reports.metrics import (  # noqa: E402
    MEMORY,
    TIME,
    Metric,
    clean_mask,
    format_length,
    is_oom,
    label_marker,
    mixer_color,
    mixer_of,
)

__all__ = ["plot_scaling", "plot_scaling_panels", "plot_fidelity", "RUN_STYLES"]

RUN_STYLES = ("-", "--", ":", "-.")
GUIDE_COLOR = "#9a9a9a"
_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "svg.fonttype": "none",
}


def _length_axis(ax, lengths: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    if len(ticks) > 10:  # keep labels readable: every other power
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_length(t) for t in ticks])


def _guides(ax, x0: float, x1: float, y0: float) -> list[Line2D]:
    """O(T), O(T log T), O(T²) through (x0, y0), drawn faintly and labelled where they leave."""
    xs = np.exp2(np.linspace(math.log2(x0), math.log2(x1), 64))
    lo, hi = ax.get_ylim()
    lines = []
    shapes = (("O(T)", xs / x0), ("O(T log T)", xs * np.log2(xs) / (x0 * math.log2(max(x0, 2)))), ("O(T²)", (xs / x0) ** 2))
    for name, growth in shapes:
        ys = y0 * growth
        (line,) = ax.plot(xs, ys, color=GUIDE_COLOR, lw=0.9, ls=(0, (4, 3)), alpha=0.7, zorder=1)
        inside = np.flatnonzero(ys <= hi)
        if len(inside) == len(ys):  # label it in the right margin, level with its end
            ax.annotate(name, (xs[-1], ys[-1]), xytext=(4, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=8, color=GUIDE_COLOR, annotation_clip=False)
        elif len(inside):  # it leaves through the top: label it there
            i = inside[-1]
            ax.annotate(name, (xs[i], ys[i]), xytext=(-3, -1), textcoords="offset points",
                        ha="right", va="top", fontsize=8, color=GUIDE_COLOR)
        lines.append(line)
    ax.set_ylim(lo, hi)
    return lines


def _series(cells: pd.DataFrame, metric: Metric) -> dict[tuple[str, str], dict[str, Any]]:
    """(run, label) -> {T, y, clean, oom_T}: ok points sorted by T, whether each is a clean
    reading (timings: neither noisy nor contended) and the first OOM length."""
    values = metric.values(cells)
    clean = clean_mask(cells) if metric is TIME else pd.Series(True, index=cells.index)
    oom = is_oom(cells)
    runs = cells["run"] if "run" in cells.columns else pd.Series("", index=cells.index)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (run, label), part in cells.groupby([runs, cells["label"]], sort=True):
        v = values.loc[part.index]
        ok = part[v.notna()]
        T = ok["T"].to_numpy(dtype=float)
        y = v[v.notna()].to_numpy(dtype=float)
        good = clean.loc[ok.index].to_numpy(dtype=bool)
        order = np.argsort(T)
        oom_T = part.loc[oom.loc[part.index], "T"]
        out[(run, label)] = {"T": T[order], "y": y[order], "clean": good[order],
                             "oom_T": float(oom_T.min()) if len(oom_T) else None}
    return out


def _draw_series(ax, T: np.ndarray, y: np.ndarray, clean: np.ndarray, color: str, marker: str, ls: Any,
                 ms: float = 5, lw: float = 1.8) -> None:
    """A line through every point; clean points filled, noisy or contended ones hollow."""
    ax.plot(T, y, color=color, lw=lw, ls=ls, zorder=3)
    ax.plot(T[clean], y[clean], color=color, marker=marker, ms=ms, ls="none", zorder=4)
    ax.plot(T[~clean], y[~clean], color=color, marker=marker, ms=ms + 1, ls="none", mfc="white", mew=1.4, zorder=4)


def _hollow_handle() -> Line2D:
    return Line2D([], [], color="#444444", marker="o", mfc="white", mew=1.4, ls="none",
                  label="hollow: noisy or\ncontended timing,\nor busy neighbours\n(not fitted)")


def plot_scaling(cells: pd.DataFrame, metric: str = "time", title: str = "") -> Figure:
    """Scaling of one group of comparable cells (optionally with a ``run`` column for overlays).

    ``metric``: "time" (seconds per call or step, plotted in ms/s) or "memory" (peak bytes).
    """
    m = {"time": TIME, "memory": MEMORY}[metric]
    series = _series(cells, m)
    all_y = np.concatenate([s["y"] for s in series.values()]) if series else np.empty(0)
    unit, scale = m.unit(list(all_y))
    runs = list(dict.fromkeys(run for run, _ in series))
    scope = str(cells["scope"].iloc[0]) if len(cells) else "mixer"
    mode = str(cells["mode"].iloc[0]) if len(cells) else "forward"

    with plt.rc_context(_RC):
        fig, (ax, ax_slope) = plt.subplots(
            2, 1, sharex=True, figsize=(8.8, 6.0), gridspec_kw={"height_ratios": [3, 1.25], "hspace": 0.08}
        )
        lengths = [float(t) for t in cells["T"].unique()]
        extents: list[float] = []
        oom_points = []
        for (run, label), s in series.items():
            color, marker = mixer_color(label), label_marker(label)
            ls = RUN_STYLES[runs.index(run) % len(RUN_STYLES)]
            T, y = s["T"], s["y"] / scale
            if len(T):
                _draw_series(ax, T, y, s["clean"], color, marker, ls)
                extents.extend(y)
                mid, slope = local_slopes(T, y)
                if len(mid):  # a slope is clean when both of its ends are
                    _draw_series(ax_slope, mid, slope, s["clean"][1:] & s["clean"][:-1], color, marker, ls, ms=3.5, lw=1.2)
            if s["oom_T"] is not None:
                if len(T) >= 2:
                    k = math.log(y[-1] / y[-2]) / math.log(T[-1] / T[-2])
                    y_oom = y[-1] * (s["oom_T"] / T[-1]) ** max(k, 0.0)
                elif len(T) == 1:
                    y_oom = y[-1] * s["oom_T"] / T[-1]
                else:
                    y_oom = None
                oom_points.append((color, T[-1] if len(T) else None, y[-1] if len(T) else None, s["oom_T"], y_oom))
                if y_oom is not None:
                    extents.append(y_oom)

        if extents:
            lo, hi = min(extents), max(extents)
            ax.set_ylim(lo / 1.8, hi * 1.8)
        ax.set_yscale("log")
        for color, T_last, y_last, T_oom, y_oom in oom_points:
            if y_oom is None:  # nothing measured: put the × on the top edge
                ax.plot([T_oom], [0.97], transform=ax.get_xaxis_transform(), marker="x", color=color,
                        ms=10, mew=2.4, ls="none", zorder=4, clip_on=False)
                continue
            ax.plot([T_last, T_oom], [y_last, y_oom], color=color, lw=1.1, ls=":", zorder=2)
            ax.plot([T_oom], [y_oom], marker="x", color=color, ms=10, mew=2.4, ls="none", zorder=4)
        if lengths and extents:
            starts = [s["y"][0] / scale for s in series.values() if len(s["y"])]
            _guides(ax, min(lengths), max(lengths), min(starts) / 1.4)

        ax.set_ylabel(m.axis_label(scope, mode, unit) + ", log scale")
        if title:
            ax.set_title(title, loc="left")
        _length_axis(ax_slope, lengths or [1.0])
        ax_slope.set_xlabel("sequence length T (log₂ scale)")
        ax_slope.set_ylabel("local slope\nΔlog y / Δlog T")
        for level, name in ((1.0, "T"), (2.0, "T²")):
            ax_slope.axhline(level, color=GUIDE_COLOR, lw=0.9, ls=(0, (4, 3)), alpha=0.7, zorder=1)
            ax_slope.annotate(name, (1.0, level), xycoords=("axes fraction", "data"), xytext=(3, 0),
                              textcoords="offset points", va="center", fontsize=8, color=GUIDE_COLOR)
        slopes = [line.get_ydata() for line in ax_slope.get_lines() if line.get_marker() not in (None, "None", "")]
        flat = np.concatenate([np.asarray(s, dtype=float) for s in slopes]) if slopes else np.empty(0)
        flat = flat[np.isfinite(flat)]
        ax_slope.set_ylim(max(-1.0, min(-0.2, flat.min() - 0.2 if len(flat) else 0.0)),
                          min(4.0, max(2.6, flat.max() + 0.3 if len(flat) else 2.6)))

        # legend rows in the order the lines end, top to bottom, so the eye goes straight across
        ends: dict[str, float] = {}
        for (_, label), s in series.items():
            end = s["y"][-1] if len(s["y"]) else -math.inf
            ends[label] = max(ends.get(label, -math.inf), end)
        handles = [Line2D([], [], color=mixer_color(label), marker=label_marker(label), lw=1.8, label=label)
                   for label in sorted(ends, key=lambda name: (-ends[name], name))]
        if len(runs) > 1:
            handles.append(Line2D([], [], ls="none", label=""))
            handles += [Line2D([], [], color="#444444", ls=RUN_STYLES[i % len(RUN_STYLES)], lw=1.5, label=f"run: {run}")
                        for i, run in enumerate(runs)]
        if oom_points:
            handles.append(Line2D([], [], color="#444444", marker="x", ms=8, mew=2, ls="none",
                                  label="first OOM\n(height extrapolated)"))
        if any(not s["clean"].all() for s in series.values()):
            handles.append(_hollow_handle())
        handles.append(Line2D([], [], color=GUIDE_COLOR, ls=(0, (4, 3)), lw=0.9, label="guide slopes"))
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.86, 0.89), fontsize=9,
                   handlelength=2.4, borderaxespad=0.0)
        fig.subplots_adjust(left=0.1, right=0.78, top=0.92, bottom=0.1)
    return fig


def plot_scaling_panels(cells: pd.DataFrame, metric: str = "time", title: str = "",
                        reference: str | None = "softmax", ncols: int = 4) -> Figure:
    """Small multiples: one panel per mixer (its variants together), the ``reference`` label drawn
    in grey in every panel, shared log axes so panels compare at a glance. Hollow markers are
    noisy or contended timings; × the first OOM length (at the panel's top edge)."""
    m = {"time": TIME, "memory": MEMORY}[metric]
    series = _series(cells, m)
    all_y = np.concatenate([s["y"] for s in series.values()]) if series else np.empty(0)
    unit, scale = m.unit(list(all_y))
    runs = list(dict.fromkeys(run for run, _ in series))
    ref = reference if reference in {label for _, label in series} else None
    mixers = sorted({mixer_of(label) for _, label in series if label != ref})
    ncols = max(1, min(ncols, len(mixers)))
    nrows = max(1, math.ceil(len(mixers) / ncols))
    lengths = [float(t) for t in cells["T"].unique()] or [1.0]
    scope = str(cells["scope"].iloc[0]) if len(cells) else "mixer"
    mode = str(cells["mode"].iloc[0]) if len(cells) else "forward"
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False,
                                 figsize=(2.6 * ncols + 0.6, 2.2 * nrows + 0.9))
        for ax, mixer in zip(axes.flat, mixers):
            for (run, label), s in series.items():
                ls = RUN_STYLES[runs.index(run) % len(RUN_STYLES)]
                if label != ref and mixer_of(label) != mixer:
                    continue
                color = GUIDE_COLOR if label == ref else mixer_color(label)
                marker, ms = ("o", 3) if label == ref else (label_marker(label), 4)
                _draw_series(ax, s["T"], s["y"] / scale, s["clean"], color, marker, ls, ms=ms, lw=1.2 if label == ref else 1.8)
                if s["oom_T"] is not None:  # the first OOM length, on the panel's top edge
                    ax.plot([s["oom_T"]], [0.95], transform=ax.get_xaxis_transform(), marker="x",
                            color=color, ms=8, mew=2, ls="none", clip_on=False)
            ax.set_title(mixer, loc="left", fontsize=10, color=mixer_color(mixer))
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())  # minor log ticks cost a draw each, say little here
            _length_axis(ax, lengths)
            ax.tick_params(labelsize=8)
        for ax in list(axes.flat)[len(mixers):]:
            ax.set_visible(False)
        fig.supxlabel("sequence length T (log₂ scale)", fontsize=10)
        fig.supylabel(m.axis_label(scope, mode, unit) + ", log scale", fontsize=10)
        handles = []
        if ref:
            handles.append(Line2D([], [], color=GUIDE_COLOR, marker="o", ms=3, lw=1.2, label=f"{ref} (reference)"))
        if any(s["oom_T"] is not None for s in series.values()):
            handles.append(Line2D([], [], color="#444444", marker="x", ms=7, mew=2, ls="none", label="first OOM"))
        if any(not s["clean"].all() for s in series.values()):
            handles.append(_hollow_handle())
        if len(runs) > 1:
            handles += [Line2D([], [], color="#444444", ls=RUN_STYLES[i % len(RUN_STYLES)], lw=1.5, label=f"run: {run}")
                        for i, run in enumerate(runs)]
        if title:
            fig.suptitle(title, x=0.01, ha="left", fontsize=11)
        if handles:
            fig.legend(handles=handles, loc="upper right", ncols=len(handles), fontsize=8, bbox_to_anchor=(0.99, 1.0))
        # fixed margins in inches (tight_layout would draw the whole figure once more)
        width, height = fig.get_size_inches()
        fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.75 / height,
                            top=1 - (0.75 if (title or handles) else 0.3) / height, wspace=0.12, hspace=0.35)
    return fig


def plot_fidelity(fidelity: pd.DataFrame, title: str = "") -> Figure:
    """Relative output error against exact softmax attention (same projections) versus T, with
    the spread over seeds as error bars; one line per mixer. Errors of exactly 0 (a mixer exact at
    that length, e.g. a window covering T) sit on a dotted floor line at the bottom, labelled."""
    ok = fidelity[fidelity["status"] == "ok"].copy()
    ok["rel_error"] = pd.to_numeric(ok["rel_error"], errors="coerce")
    ok = ok[ok["rel_error"].notna() & (ok["rel_error"] >= 0)]
    positive = ok.loc[ok["rel_error"] > 0, "rel_error"]
    floor = 10.0 ** (math.floor(math.log10(positive.min())) - 1) if len(positive) else 1e-8
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8.2, 4.6))
        labels = sorted(ok["label"].unique(), key=str)
        runs = list(dict.fromkeys(ok["run"])) if "run" in ok.columns else [""]
        for label in labels:
            for i, run in enumerate(runs):
                part = ok[ok["label"] == label]
                if "run" in ok.columns:
                    part = part[part["run"] == run]
                if part.empty:
                    continue
                part = part.sort_values("T")
                y = part["rel_error"].to_numpy(dtype=float)
                err = np.minimum(part["rel_error_std"].fillna(0.0).to_numpy(dtype=float), y * 0.95)
                exact = bool(np.all(y == 0))
                name = f"{label} (exact: 0)" if exact else label
                ax.errorbar(part["T"], np.maximum(y, floor), yerr=np.where(y > 0, err, 0.0),
                            color=mixer_color(label), marker=label_marker(label), ms=5, lw=1.8,
                            ls=RUN_STYLES[i % len(RUN_STYLES)], capsize=3, label=name if i == 0 else None)
        ax.set_yscale("log")
        if (ok["rel_error"] == 0).any():
            ax.axhline(floor, color=GUIDE_COLOR, lw=0.9, ls=":", zorder=1)
            ax.annotate("exactly 0", (0.0, floor), xycoords=("axes fraction", "data"), xytext=(4, 3),
                        textcoords="offset points", fontsize=8, color=GUIDE_COLOR)
        _length_axis(ax, [float(t) for t in fidelity["T"].unique()] or [1.0])
        ax.set_xlabel("sequence length T (log₂ scale)")
        ax.set_ylabel("relative error ‖y − y_softmax‖ / ‖y_softmax‖\n(log scale)")
        if title:
            ax.set_title(title, loc="left")
        failed = sorted(set(fidelity.loc[fidelity["status"] != "ok", "label"]) - set(labels), key=str)
        if failed:
            ax.annotate("no result: " + ", ".join(failed), (0.0, -0.2), xycoords="axes fraction", fontsize=8,
                        color="#666666", va="top")
        if labels:
            fig.legend(loc="upper left", bbox_to_anchor=(0.81, 0.88), fontsize=9, borderaxespad=0.0)
        fig.subplots_adjust(left=0.13, right=0.79, top=0.9, bottom=0.16 if not failed else 0.24)
    return fig

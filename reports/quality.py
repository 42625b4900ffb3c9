"""Quality next to cost (torch-free): read ``kind: "quality"`` records, choose each mixer's
learning rate on validation and report its test accuracy over seeds, join with profile cells by
mixer + config, and draw accuracy against training throughput with peak memory as bubble size.

Selection (one rule, :func:`choose_lr`, used by the sweep to pick the lr of its later seeds, by
its end table and by the report): per (task, T, label), the lr with the highest mean
*validation* accuracy over the ok seeds that every ok lr has (all of them in a full grid; seed 0
when the sweep tried the grid on seed 0 only and ran the other seeds at the chosen lr); its
*test* accuracies, over all its seeds, are reported as mean ± a 95% t-interval (none with one seed). A mixer is "above chance"
when the interval's lower end clears the chance level.

Join: a quality label matches the profile cells of the same mixer whose config agrees on every
field except ``dim`` and ``heads`` (the profile usually runs wider models), in ``train`` mode,
at the same T, preferring ``scope=model`` (the encoder the quality run trains). Throughput is
tokens per second of a training step: ``batch * T / time_median_s``. Without a matching profile
cell the quality run's own tokens/s is used (marked) and the bubble has no size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.metrics import format_bytes, mixer_color  # noqa: E402

__all__ = ["read_quality", "quality_frame", "choose_lr", "select_best", "t_interval", "pareto_front", "join_cost",
           "accuracy_rows", "detail_rows", "plot_pareto", "format_summary", "add_quality_section"]

# two-sided 95% Student t quantiles by degrees of freedom (df > 30: the normal 1.96)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t95(df: int) -> float:
    if df > 30:
        return 1.96
    return _T95.get(df) or _T95[min(k for k in _T95 if k >= df)]


def t_interval(values: Iterable[float]) -> tuple[float, float | None]:
    """(mean, 95% half-width); half-width None for a single value."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), None
    if len(v) == 1:
        return float(v[0]), None
    return float(v.mean()), float(_t95(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def quality_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Quality records as a table; a cell recorded again (same key) keeps its last record."""
    rows = [r for r in records if isinstance(r, dict) and r.get("kind") == "quality"]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if "key" in df.columns:
        df = df.drop_duplicates("key", keep="last").reset_index(drop=True)
    for col in ("T", "seed", "lr", "train_acc", "val_acc", "test_acc", "tokens_per_s", "chance"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def read_quality(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every quality record of the files (other kinds and unreadable lines are skipped);
    ``.attrs["counts"]`` holds the number of quality lines read per file."""
    records, counts = [], {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "quality":
                records.append(rec)
                counts[str(path)] = counts.get(str(path), 0) + 1
    df = quality_frame(records)
    df.attrs["counts"] = counts
    return df


def choose_lr(part: pd.DataFrame) -> float | None:
    """The lr chosen on validation among the records of one (task, T, label): highest mean
    ``val_acc`` over the seeds that every lr with an ok record has (ties: the smaller lr); when
    the lrs share no seed, each lr's mean over its own ok seeds. None without an ok record."""
    ok = part[(part["status"] == "ok") & part["val_acc"].notna()]
    if ok.empty:
        return None
    seeds = [set(g["seed"]) for _, g in ok.groupby("lr")]
    shared = set.intersection(*seeds)
    scored = ok[ok["seed"].isin(shared)] if shared else ok
    by_lr = scored.groupby("lr")["val_acc"].mean().sort_index()
    return float(by_lr.idxmax())


def select_best(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, T, label): the lr chosen on validation, test accuracy over seeds."""
    cols = ["task", "T", "label", "mixer", "config", "lr", "n", "test_mean", "test_ci", "test_spread", "val_mean",
            "chance", "tokens_per_s", "status", "reason"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (task, T, label), part in df.groupby(["task", "T", "label"], sort=False):
        ok = part[part["status"] == "ok"]
        first = part.iloc[0]
        base = {"task": task, "T": int(T), "label": label, "mixer": first["mixer"], "config": first.get("config"),
                "chance": part["chance"].dropna().mean() if "chance" in part else None}
        if ok.empty:
            statuses = sorted(set(part["status"]))
            reasons = [r for r in part["reason"] if isinstance(r, str)]
            rows.append({**base, "lr": None, "n": 0, "test_mean": None, "test_ci": None, "test_spread": None,
                         "val_mean": None, "tokens_per_s": None, "status": "/".join(statuses),
                         "reason": reasons[0] if reasons else None})
            continue
        lr = choose_lr(part)
        chosen = ok[ok["lr"] == lr]
        mean, ci = t_interval(chosen["test_acc"])
        rows.append({**base, "lr": lr, "n": len(chosen), "test_mean": mean, "test_ci": ci,
                     "test_spread": float(chosen["test_acc"].max() - chosen["test_acc"].min()),
                     "val_mean": float(chosen["val_acc"].mean()), "tokens_per_s": float(chosen["tokens_per_s"].mean()),
                     "status": "ok", "reason": None})
    return pd.DataFrame(rows, columns=cols)


def pareto_front(x: Iterable[float], y: Iterable[float]) -> list[int]:
    """Indices of points no other point beats on both x and y (higher is better on both)."""
    pts = list(zip(x, y))
    front = []
    for i, (xi, yi) in enumerate(pts):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        dominated = any(
            np.isfinite(xj) and np.isfinite(yj) and xj >= xi and yj >= yi and (xj > xi or yj > yi)
            for j, (xj, yj) in enumerate(pts) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _config_identity(config: Any) -> str | None:
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    if not isinstance(config, dict):
        return None
    return json.dumps({k: v for k, v in config.items() if k not in ("dim", "heads")}, sort_keys=True, default=str)


def join_cost(best: pd.DataFrame, cells: pd.DataFrame | None) -> pd.DataFrame:
    """``best`` plus ``throughput`` (tokens/s of a training step), ``mem_peak_bytes`` and
    ``cost_source`` ("profile" or "quality run") from matching profile cells."""
    out = best.copy()
    out["throughput"] = out["tokens_per_s"]
    out["mem_peak_bytes"] = np.nan
    out["cost_source"] = "quality run"
    if cells is None or cells.empty or out.empty:
        return out
    train = cells[(cells["mode"] == "train") & (cells["status"] == "ok")].copy()
    if train.empty:
        return out
    train["_cfg"] = train["config"].map(_config_identity)
    train["_rank"] = (train["scope"] != "model").astype(int)
    for i, row in out.iterrows():
        ident = _config_identity(row["config"])
        match = train[(train["mixer"] == row["mixer"]) & (train["_cfg"] == ident) & (train["T"] == row["T"])]
        if match.empty:
            continue
        cell = match.sort_values("_rank").iloc[0]
        t = pd.to_numeric(cell.get("time_median_s"), errors="coerce")
        if pd.notna(t) and t > 0:
            out.at[i, "throughput"] = float(cell["batch"]) * float(cell["T"]) / float(t)
            out.at[i, "cost_source"] = "profile"
        mem = pd.to_numeric(cell.get("mem_peak_bytes"), errors="coerce")
        if pd.notna(mem):
            out.at[i, "mem_peak_bytes"] = float(mem)
    return out


def _acc_text(row: pd.Series) -> str:
    if row["status"] != "ok":
        return row["status"]
    text = f"{100 * row['test_mean']:.1f}"
    if row["test_ci"] is not None and pd.notna(row["test_ci"]):
        text += f" ± {100 * row['test_ci']:.1f}"
    chance = row["chance"]
    if pd.notna(chance) and row["test_ci"] is not None and pd.notna(row["test_ci"]) \
            and row["test_mean"] - row["test_ci"] <= chance:
        text += " (≈chance)"
    return text


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if pd.notna(value) else "?"


def accuracy_rows(best: pd.DataFrame) -> tuple[list[str], list[list[Any]], list[tuple[int, int]]]:
    """(columns, rows, bold cells): one row per mixer, one column per task @ T, a chance row
    first; bold = the best mean test accuracy of each column."""
    groups = list(dict.fromkeys(zip(best["task"], best["T"])))
    columns = ["mixer"] + [f"{task} T={T}" for task, T in groups]
    chance = ["chance"] + [_pct(best.loc[(best["task"] == t) & (best["T"] == T), "chance"].mean()) for t, T in groups]
    rows, bold = [chance], []
    labels = list(dict.fromkeys(best["label"]))
    for label in labels:
        row: list[Any] = [label]
        for task, T in groups:
            hit = best[(best["task"] == task) & (best["T"] == T) & (best["label"] == label)]
            row.append(_acc_text(hit.iloc[0]) if len(hit) else "–")
        rows.append(row)
    for j, (task, T) in enumerate(groups, start=1):
        part = best[(best["task"] == task) & (best["T"] == T) & (best["status"] == "ok")]
        if len(part):
            top = part["test_mean"].max()
            for label in part.loc[part["test_mean"] == top, "label"]:
                bold.append((1 + labels.index(label), j))
    return columns, rows, bold


def detail_rows(best: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    """One row per (task, T, mixer): chosen lr, seeds, test mean, interval, seed spread, val mean."""
    columns = ["task", "T", "mixer", "lr", "seeds", "test %", "± 95%", "spread", "val %", "tokens/s", "status"]
    rows = []
    for _, r in best.iterrows():
        ok = r["status"] == "ok"
        rows.append([r["task"], int(r["T"]), r["label"], f"{r['lr']:g}" if ok else "–", int(r["n"]),
                     _pct(r["test_mean"]) if ok else "–",
                     _pct(r["test_ci"]) if ok and r["test_ci"] is not None and pd.notna(r["test_ci"]) else "–",
                     _pct(r["test_spread"]) if ok else "–", _pct(r["val_mean"]) if ok else "–",
                     f"{r['tokens_per_s']:,.0f}" if ok and pd.notna(r["tokens_per_s"]) else "–",
                     r["status"] if ok else f"{r['status']}: {r['reason']}"])
    return columns, rows


def plot_pareto(points: pd.DataFrame, title: str = ""):
    """Test accuracy against training throughput (log x), bubble area ~ peak memory, the Pareto
    frontier (higher accuracy and throughput) drawn as a step line, chance as a dotted line."""
    ok = points[(points["status"] == "ok") & points["throughput"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.2, 5.0))
    mem = ok["mem_peak_bytes"]
    mmax = float(mem.max()) if mem.notna().any() else 1.0
    for _, row in ok.iterrows():
        has_mem = pd.notna(row["mem_peak_bytes"])
        size = 60 + 900 * (row["mem_peak_bytes"] / mmax) if has_mem else 60
        y, err = 100 * row["test_mean"], row["test_ci"]
        color = mixer_color(row["label"])
        ax.scatter(row["throughput"], y, s=size, color=color, alpha=0.55 if has_mem else 0.9,
                   edgecolors="black" if row["cost_source"] == "profile" else color, linewidths=0.8, zorder=3,
                   marker="o" if has_mem else "s")
        if err is not None and pd.notna(err):  # the interval, clipped to what an accuracy can be
            lo, hi = min(y, 100 * err), min(100.0 - y, 100 * err)
            ax.errorbar(row["throughput"], y, yerr=[[max(lo, 0.0)], [max(hi, 0.0)]], color=color, lw=1, capsize=2,
                        zorder=2)
    for k, (_, row) in enumerate(ok.sort_values("throughput").iterrows()):  # alternate label offsets
        ax.annotate(row["label"], (row["throughput"], 100 * row["test_mean"]), xytext=(5, 4 if k % 2 else -11),
                    textcoords="offset points", fontsize=8)
    front = pareto_front(ok["throughput"], ok["test_mean"])
    if front:
        f = ok.iloc[front].sort_values("throughput")
        ax.scatter(f["throughput"], 100 * f["test_mean"], s=260, facecolors="none", edgecolors="#333333",
                   linewidths=1.4, zorder=4, label="Pareto frontier (ringed)")
        ax.step(f["throughput"], 100 * f["test_mean"], where="pre", color="#333333", lw=1.2, ls="--", zorder=1)
    chance = points["chance"].dropna()
    if len(chance):
        ax.axhline(100 * chance.mean(), color="#888888", ls=":", lw=1, label=f"chance {100 * chance.mean():.1f}%")
    if len(ok):
        ax.set_xscale("log")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training throughput (tokens/s, log scale)")
    ax.set_ylabel("test accuracy (%), 95% interval over seeds")
    note = "bubble area ∝ peak memory" + (f" (largest {format_bytes(mmax)})" if mem.notna().any() else ": no profile joined")
    ax.set_title((title + "\n" if title else "") + note, loc="left", fontsize=10)
    missing = sorted(set(points["label"]) - set(ok["label"]))
    if missing:
        ax.annotate("no result: " + ", ".join(missing), (0.0, -0.16), xycoords="axes fraction", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def format_summary(best: pd.DataFrame) -> str:
    """The accuracy table as plain text (the sweep's end table)."""
    if best.empty:
        return "no quality records"
    columns, rows, _ = accuracy_rows(best)
    widths = [max(len(str(r[i])) for r in [columns] + rows) for i in range(len(columns))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [columns] + rows]
    return "\n".join(lines)


def add_quality_section(doc, quality: pd.DataFrame, cells: pd.DataFrame | None, figures: list) -> None:
    """The report's quality section: accuracy table and one Pareto chart per (task, T)."""
    from reports.doc import Bold, Frame, make_figure as _figure
    from reports.render import _slug

    best = select_best(quality)
    doc.h2("Quality next to cost", "quality")
    doc.p("Test accuracy (%) of each mixer on synthetic tasks (`zoo quality`): the learning rate is chosen on the "
          "validation split, the test split is reported as mean ± 95% t-interval over seeds; '≈chance' marks an "
          "interval that reaches the chance level. Bold: best mean per column.")
    columns, rows, bold = accuracy_rows(best)
    for i, j in bold:
        rows[i][j] = Bold(str(rows[i][j]))
    doc.frame(Frame(columns, rows, caption="test accuracy (%), lr chosen on validation"))
    doc.frame(Frame(*detail_rows(best), caption="per result: chosen lr, seeds, interval and seed spread (points)"))
    joined = join_cost(best, cells)
    n_profile = int((joined["cost_source"] == "profile").sum())
    doc.p(f"Cost joined from profile records for {n_profile} of {len(joined)} (mixer, task, T) results (train mode, "
          "same mixer config apart from width, same T); the others use the quality run's own tokens/s and have no "
          "memory bubble (square markers).")
    for (task, T), part in joined.groupby(["task", "T"], sort=False):
        title = f"{task}, T={T}: accuracy vs training throughput"
        figures.append(_figure(plot_pareto(part, title), f"quality-{_slug(task)}-{T}", title + "."))
        doc.figure(figures[-1])

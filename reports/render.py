"""The report folder: ``report.html`` (self-contained, figures embedded), ``report.md``, the figures
as PNG and SVG under ``figures/``, ``summary.csv`` (one row per cell) and, on request,
``tables.tex``.

Sections: consumption tables, scaling plots, complexity summary (fitted exponent with its
interval next to the declared class), crossovers against the baseline, fidelity against exact
softmax, fairness notes, environment. With several runs each run gets its tables and the
common cells are compared side by side with the ratio between runs.

The document is built once as a list of blocks (:class:`Doc`) and written to Markdown and HTML
by two small renderers, so both formats always say the same thing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from reports.cells import NEIGHBOUR_EFFECT, unclean_reasons
from reports.complexity import complexity_section
from reports.doc import Bold, Doc, Figure, Flag, Frame, group_heading, lengths_text, make_figure
from reports.errors import ReportError
from reports.fit import FLAG_THRESHOLD
from reports.load import Profile, cell_identity, read_profiles
from reports.metrics import (
    MEMORY,
    SHAPE_COLUMNS,
    TIME,
    clean_mask,
    format_bytes,
    format_number,
    group_cells,
    group_slug,
    group_title,
    mixer_color,
)
from reports.tables import (
    consumption_tables,
    resolve_baseline,
    run_comparison_table,
    to_html,
    to_latex,
    to_markdown,
)

__all__ = ["Report", "build_report", "FORMATS", "FLAG_THRESHOLD", "Doc", "Flag", "Frame", "Figure"]

FORMATS = ("html", "md", "tex")


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    out_dir: Path
    files: dict[str, Path]
    figures: list[Path]
    warnings: list[str]


# --- helpers ------------------------------------------------------------------------------------
def _is_true(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def _default_baseline(profiles: list[Profile]) -> str:
    for profile in profiles:
        baseline = profile.settings.get("baseline")
        if baseline:
            return str(baseline)
    return "softmax"


# --- sections -----------------------------------------------------------------------------------
def _fidelity_section(doc: Doc, fidelity: pd.DataFrame, figures: list[Figure]) -> None:
    from reports.plots import plot_fidelity

    doc.h2("Fidelity against exact softmax attention", "fidelity")
    if fidelity.empty:
        doc.p("No fidelity records in the inputs. `zoo fidelity --out FILE` computes them (it runs the "
              "mixers; this report never does) and `zoo compare PROFILE FILE` reads them.")
        return
    doc.p(
        "Relative error ‖y − y_softmax‖_F / ‖y_softmax‖_F of each mixer's output against exact softmax "
        "attention computed with the mixer's own q/k/v/out projections on the same inputs, averaged "
        "over seeds (± standard deviation), with the mean cosine similarity of output rows. Branches a "
        "mixer's spec declares outside the approximation are switched off and named in its label "
        "(e.g. nystrom[conv_kernel=0]); other extra terms (an output normalisation) stay in the error. "
        "~1e-7 or 0 means exact at that length (e.g. a window covering T)."
    )
    multi = "run" in fidelity.columns and fidelity["run"].nunique() > 1
    for run, part in (fidelity.groupby("run", sort=False) if multi else [(None, fidelity)]):
        shape = part.iloc[0]
        desc = f"B={int(shape['batch'])}, D={int(shape['dim'])}, {int(shape['heads'])} heads, {shape['dtype']}"
        name = "fidelity" + (f"-{_slug(run)}" if run else "")
        fig = plot_fidelity(part, title=f"fidelity vs exact softmax · {desc}" + (f" · {run}" if run else ""))
        figures.append(make_figure(fig, name, f"Relative error against exact softmax attention as T grows ({desc})."))
        doc.figure(figures[-1])
        lengths = sorted(int(t) for t in part["T"].unique())
        rows = []
        for label, rows_l in part.groupby("label", sort=True):
            row: list[Any] = [label]
            for T in lengths:
                cell = rows_l[rows_l["T"] == T]
                if cell.empty:
                    row.append("–")
                    continue
                c = cell.iloc[-1]
                if c["status"] != "ok":
                    row.append(Flag(f"{c['status']}: {c['reason']}" if pd.notna(c["reason"]) else c["status"]))
                    continue
                text = f"{c['rel_error']:.2g}"
                if pd.notna(c["rel_error_std"]):
                    text += f" ± {c['rel_error_std']:.1g}"
                if pd.notna(c["cosine"]):
                    text += f" (cos {c['cosine']:.3f})"
                row.append(text)
            rows.append(row)
        doc.frame(Frame(["mixer"] + [str(T) for T in lengths], rows,
                        caption=f"Relative error ± std over seeds (cosine similarity){' · ' + run if run else ''}"))


def _fairness_section(doc: Doc, runs: list[tuple[str, pd.DataFrame]]) -> None:
    doc.h2("Fairness notes", "fairness")
    doc.p(
        "What each mixer was actually measured with, so unfair comparisons show: parameters, FLOPs "
        "at the longest measured length (the spec's analytic formula against torch's FlopCounterMode; "
        "flagged beyond 2×), the dtype the computation ran in, gradient checkpointing, the SDPA "
        "backend that ran, how memory was read, and on CPU the heap of the memory pass and of the "
        "timed calls (tracking / caching: resident growth follows live tensors, timed calls take no "
        "page faults; system: glibc as it is, whose timings depend on what ran before)."
    )
    multi = len(runs) > 1
    notes = []
    head = ["mixer", "params", "GFLOP analytic / counted", "compute dtype", "checkpointing", "SDPA backend",
            "memory read by", "threads", "CPU heap (memory / timing)"]
    for run, cells in runs:
        groups = group_cells(cells)
        for group, part in groups:
            title = group_title(group)
            group_heading(doc, run, group, multi, len(groups))
            rows = []
            dtypes = set()
            for label, rows_l in part.groupby("label", sort=True):
                ok = rows_l[rows_l["status"] == "ok"].sort_values("T")
                last = ok.iloc[-1] if len(ok) else rows_l.sort_values("T").iloc[-1]
                params = rows_l["params"].dropna()
                flops: Any = "–"
                if pd.notna(last["flops_analytic"]) or pd.notna(last["flops_counted"]):
                    fa, fc = last["flops_analytic"], last["flops_counted"]
                    flops = f"{_gflop(fa)} / {_gflop(fc)} at T={int(last['T'])}"
                    if _is_true(last["flops_disagree"]) or (pd.notna(fa) and pd.notna(fc) and fc > 0 and not 0.5 <= fa / fc <= 2):
                        flops = Flag(flops + (f" ({fa / fc:.2g}×)" if pd.notna(fc) and fc > 0 and pd.notna(fa) else ""))
                dtype = ", ".join(sorted(set(rows_l["compute_dtype"].dropna().astype(str)))) or "–"
                dtypes.add(dtype)
                ckpt = rows_l["checkpointing"].dropna()
                ckpt_text: Any = "on" if any(_is_true(v) for v in ckpt) else ("off" if len(ckpt) else "–")
                if ckpt_text == "on":
                    ckpt_text = Flag("on")
                backend = ", ".join(sorted(set(rows_l["sdpa_backend"].dropna().astype(str)))) or "none"
                mem = ", ".join(sorted(set(rows_l["mem_method"].dropna().astype(str)))) or "–"
                threads = ", ".join(str(int(t)) for t in sorted(set(rows_l["threads"].dropna()))) or "–"
                rows.append([
                    label, f"{int(params.iloc[0]):,}" if len(params) else "–", flops, dtype, ckpt_text,
                    backend, mem, threads, _heap_text(rows_l),
                ])
            doc.frame(Frame(head, rows))
            if len(dtypes) > 1:
                notes.append(f"{title}: mixers ran in different dtypes ({', '.join(sorted(dtypes))}).")
    doc.items(notes)


def _heap_text(rows: pd.DataFrame) -> str:
    """'tracking / caching' (or several, comma-separated) from the cells' cpu_heap records."""
    seen = set()
    for value in rows["cpu_heap"] if "cpu_heap" in rows else ():
        if isinstance(value, dict):
            seen.add(f"{value.get('memory') or '–'} / {value.get('timing') or '–'}")
    return ", ".join(sorted(seen)) or "–"


def _gflop(v: Any) -> str:
    return "–" if v is None or pd.isna(v) else format_number(float(v) / 1e9)


def _environment_section(doc: Doc, profiles: list[Profile], cells: pd.DataFrame) -> None:
    doc.h2("Environment", "environment")
    keys = [("device", "device_name"), ("CPU", "cpu_model"), ("threads", "threads"), ("torch", "torch"),
            ("CUDA", "cuda"), ("cuDNN", "cudnn"), ("Python", "python"), ("platform", "platform"),
            ("host", "hostname"), ("governor", "governor"), ("load average", "loadavg"),
            ("OMP / MKL threads", None), ("commit", None)]
    rows = []
    for label, key in keys:
        row = [label]
        for profile in profiles:
            env = profile.env
            if label == "commit":
                commit = env.get("git_commit")
                value = f"{str(commit)[:12]}{' (dirty)' if env.get('git_dirty') else ''}" if commit else "–"
            elif label == "OMP / MKL threads":
                value = f"{env.get('omp_num_threads') or '–'} / {env.get('mkl_num_threads') or '–'}"
            else:
                value = env.get(key)
                if isinstance(value, list):
                    value = ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value)
                value = "–" if value in (None, "") else str(value)
            if label == "commit" and env.get("git_dirty"):
                value = Flag(value)
            row.append(value)
        rows.append(row)
    created = ["created"] + [", ".join(str(h.get("created")) for h in p.headers if h.get("created")) or "–" for p in profiles]
    rows.append(created)
    doc.frame(Frame(["", *[p.name for p in profiles]], rows))
    doc.h3("Command lines")
    doc.items(f"{p.name}: `{c}`" for p in profiles for c in p.commands)
    quality = []
    for p in profiles:
        if p.bad_lines:
            shown = ", ".join(map(str, p.bad_lines[:10])) + (" ..." if len(p.bad_lines) > 10 else "")
            quality.append(f"{p.name}: {len(p.bad_lines)} partial or corrupted line(s) skipped (line {shown}).")
        if p.superseded:
            quality.append(f"{p.name}: {p.superseded} cell(s) measured again by a later run; the last record is used.")
        if p.ignored:
            quality.append(f"{p.name}: {p.ignored} record(s) of a kind this reader does not know, ignored.")
    if quality:
        doc.h3("Data quality")
        doc.items(quality)
    _unclean_cells(doc, cells)
    disagree = cells[cells["mem_disagree"].map(_is_true)] if not cells.empty else cells
    if not disagree.empty:
        doc.h3("Memory readings that disagree")
        doc.p("Cells where the live-tensor peak and the resident-memory peak differ by more than 25% "
              "(memory outside torch tensors, or allocator effects).")
        rows = [[c["run"], c["label"], c["mode"], str(int(c["T"])), format_bytes(c["mem_tensor_peak_bytes"]),
                 format_bytes(c["mem_peak_bytes"])] for _, c in disagree.iterrows()]
        doc.frame(Frame(["run", "mixer", "mode", "T", "tensor peak", "resident peak"], rows))


def _unclean_cells(doc: Doc, cells: pd.DataFrame) -> None:
    """The timings that are not clean (noisy, contended, or beside busy neighbours), so the reader
    can judge the marks."""
    doc.h3("Noisy or contended timings")
    if cells.empty:
        doc.p("None.")
        return
    ok = cells[cells["status"] == "ok"]
    unclean = ok[~clean_mask(ok)]
    if unclean.empty:
        doc.p("None: every timed cell met the spread threshold (IQR / median) on a quiet machine.")
        return
    doc.p("Left out of exponent verdicts and crossovers, drawn hollow in the scaling plots. Other CPU: "
          "cores other processes used while the cell was timed, on its cores and, after the slash, on the "
          "cores the sweep left free (neighbours); contended samples: samples taken while they used its cores.")
    rows = []
    for _, c in unclean.sort_values(["run", "label", "mode", "T"]).iterrows():
        spread = c["time_iqr_s"] / c["time_median_s"] if c["time_median_s"] else float("nan")
        why = ", ".join(unclean_reasons(c))
        other = " / ".join(f"{c[k]:.2f}" if k in c and pd.notna(c[k]) else "–" for k in ("other_cpu", "neighbour_cpu"))
        rows.append([c["run"], c["label"], c["mode"], str(int(c["T"])), why, f"{spread:.0%}",
                     str(_int_or(c["time_n"])), str(_int_or(c.get("contended_samples"))), other])
    doc.frame(Frame(["run", "mixer", "mode", "T", "why", "IQR / median", "repetitions", "contended samples",
                     "other CPU (cores)"], rows))


def _int_or(v: Any) -> Any:
    return int(v) if v is not None and pd.notna(v) else "–"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def _check_common(runs: list[tuple[str, pd.DataFrame]]) -> None:
    """Several runs must share cells, or a side-by-side comparison means nothing."""
    ref_name, ref = runs[0]
    ref_ids = set(cell_identity(ref))
    for name, cells in runs[1:]:
        if not ref_ids & set(cell_identity(cells)):
            raise ReportError(
                f"runs {ref_name!r} and {name!r} have no common cells (same mixer label, scope, mode, T, "
                f"batch, dim, heads, depth, dtype, causal): {ref_name} has {_describe(ref)}; "
                f"{name} has {_describe(cells)}"
            )


def _describe(cells: pd.DataFrame) -> str:
    def values(col):
        vals = sorted({str(_int_or(v)) if col in ("batch", "dim", "heads") else str(v) for v in cells[col].dropna()})
        return ",".join(vals) if len(vals) <= 4 else ",".join(vals[:4]) + ",..."

    lengths = sorted(int(t) for t in cells["T"].unique())
    return (f"mixers {values('label')}, scope {values('scope')}, mode {values('mode')}, "
            f"T {lengths_text(lengths)}, batch {values('batch')}, dim {values('dim')}, "
            f"heads {values('heads')}, dtype {values('dtype')}")


def _summary_csv(runs: list[tuple[str, pd.DataFrame]], baseline: str) -> pd.DataFrame:
    frames = []
    for run, cells in runs:
        for _, part in group_cells(cells):
            part = part.copy()
            base = resolve_baseline(sorted(part["label"].unique(), key=str), baseline)
            for metric, column in ((TIME, "time_ratio_to_baseline"), (MEMORY, "memory_ratio_to_baseline")):
                values = metric.values(part)
                if base is None:
                    part[column] = float("nan")
                    continue
                base_values = values[part["label"] == base].groupby(part.loc[part["label"] == base, "T"]).last()
                part[column] = values / part["T"].map(base_values)
            part["baseline"] = base
            frames.append(part)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    columns = ["run", "label", "mixer", "scope", "mode", "T", "batch", "dim", "heads", "depth", "dtype", "device",
               "causal", "status", "reason", "inferred", "time_median_s", "time_iqr_s", "time_n", "noisy",
               "steps_per_s", "mem_peak_bytes", "mem_abs_peak_bytes", "mem_method", "baseline",
               "time_ratio_to_baseline", "memory_ratio_to_baseline", "params", "flops_analytic",
               "flops_counted", "compute_dtype", "sdpa_backend", "checkpointing", "threads", "env_id"]
    return table[columns]


def _threads_text(cells: pd.DataFrame) -> str:
    counts = sorted({int(t) for t in pd.to_numeric(cells["threads"], errors="coerce").dropna()})
    if not counts:
        return "threads not recorded"
    return ", ".join(map(str, counts)) + (" thread" if counts == [1] else " threads")


def thread_mismatch(runs: list[tuple[str, pd.DataFrame]]) -> str:
    """A sentence when the runs were timed at different thread counts ('' when they were not):
    the thread count changes the comparison itself, so such cells are never put side by side."""
    texts = {name: _threads_text(cells) for name, cells in runs}
    if len(set(texts.values())) < 2:
        return ""
    listed = "; ".join(f"{name}: {text}" for name, text in texts.items())
    return (f"The runs were timed at different thread counts ({listed}). The thread count changes the "
            "comparison itself: cells at different thread counts are never compared side by side, "
            "fitted together or drawn as one series.")


def cut_sweep(profile) -> str:
    """A sentence when a sweep was killed before writing cells it had measured in round 1 ('' when
    not): they are in the file only as ``held`` records, so the tables and fits lack them."""
    if not profile.cut:
        return ""
    n = len(profile.cut)
    return (f"{profile.name}: the sweep was killed before writing {n} cell(s) it had measured in round 1 "
            f"(journalled as held records, without their timing); they are missing from every table and "
            f"fit. Run the same `zoo profile` command with --resume to measure them.")


def busy_neighbours(profile) -> str:
    """A sentence when the sweep's pre-flight found other processes busy on the cores the sweep left
    free ('' when not; ``neighbours`` in the header's ``contention``, decided by the profiler). The
    cells timed while they ran carry their own ``neighbours`` mark; this says why, once."""
    info = profile.contention
    if not info.get("neighbours"):
        return ""
    top = ", ".join(f"{p.get('name')} {p.get('cpu', 0):.2f}" for p in info.get("top") or [])
    return (f"{profile.name}: when the sweep started, other processes used {info.get('other_cpu', 0):.2f} of "
            f"{info.get('cores')} cores{f' ({top})' if top else ''}, on the cores its {info.get('threads')} "
            f"thread(s) left free. They share the caches, the memory bandwidth and perhaps the physical cores "
            f"with the sweep, which no per-sample figure sees ({NEIGHBOUR_EFFECT}), so the cells timed while "
            f"they ran are marked ≈ and not fitted. "
            f"Quote numbers from a run on a quiet machine.")


def _consumption_section(doc: Doc, runs: list[tuple[str, pd.DataFrame]], baseline: str, latex: list[str],
                         notes: list[str] = ()) -> None:
    """Per run, the paper's table per group of comparable cells; with several runs, each other
    run against the first on the cells they share. ``notes``: :func:`cut_sweep`'s and
    :func:`busy_neighbours`' sentences, first."""
    doc.h2("Consumption", "consumption")
    for text in notes:
        doc.p(f"⚠ {text}")
    if not runs:
        doc.p("No sweep in the inputs (only fidelity records).")
    for run, run_cells in runs:
        if len(runs) > 1:
            doc.h3(f"Run {run}")
        for table in consumption_tables(run_cells, baseline):
            doc.table(table)
            latex.append(to_latex(table))
    if len(runs) < 2:
        return
    ref_name, ref_cells = runs[0]
    doc.h3(f"Side by side: each run against {ref_name}")
    mixed = thread_mismatch(runs)
    if mixed:
        doc.p(mixed)
    ref_groups = {tuple(str(g[c]) for c in SHAPE_COLUMNS): part for g, part in group_cells(ref_cells, SHAPE_COLUMNS)}
    for name, other in runs[1:]:
        for group, part in group_cells(other, SHAPE_COLUMNS):
            ref_part = ref_groups.get(tuple(str(group[c]) for c in SHAPE_COLUMNS))
            if ref_part is None or not set(cell_identity(ref_part)) & set(cell_identity(part)):
                continue
            table = run_comparison_table(ref_part, part, ref_name, name, baseline,
                                         title=f"{name} vs {ref_name} · {group_title(group)}")
            doc.table(table)
            latex.append(to_latex(table))


def _scaling_section(doc: Doc, runs: list[tuple[str, pd.DataFrame]], cells: pd.DataFrame,
                     figures: list[Figure], warnings: list[str], baseline: str) -> None:
    """Time and memory against T per group; several runs share a figure (line style per run)."""
    from reports.plots import plot_scaling, plot_scaling_panels

    doc.h2("Scaling", "scaling")
    if not runs:
        return
    doc.p("Cost against sequence length on log-log axes (log₂ T), one colour per mixer in every figure; "
          "× marks the first length that ran out of memory, placed by extending the last measured slope. "
          "Dashed grey lines are O(T), O(T log T) and O(T²) for reference. Lower panels: local slopes "
          "between consecutive lengths (1 = linear, 2 = quadratic). Hollow markers: timings that are "
          "noisy or were taken while other processes used the cores (or, beside them, the cores the sweep "
          "left free); they are drawn but never fitted. "
          "Each overview is followed by small multiples: one panel per mixer on shared axes, with the "
          "baseline in grey in every panel.")
    for group, part in group_cells(cells, SHAPE_COLUMNS if len(runs) > 1 else None):
        title = group_title(group)
        for metric in (TIME, MEMORY):
            if metric.values(part).notna().sum() == 0:
                warnings.append(f"{title}: no {metric.name} readings to plot")
                continue
            name = f"scaling-{metric.name}-{group_slug(group)}"
            if any(f.name == name for f in figures):  # same shape in two environments of one file
                name += f"-{len(figures)}"
            what = "Time" if metric is TIME else "Peak memory"
            figures.append(make_figure(plot_scaling(part, metric.name, title=title), name, f"{what} against T: {title}."))
            doc.figure(figures[-1])
            reference = resolve_baseline(sorted(part["label"].unique(), key=str), baseline)
            if part["label"].nunique() - (reference is not None) > 1:
                fig = plot_scaling_panels(part, metric.name, title=title, reference=reference)
                figures.append(make_figure(fig, f"{name}-panels", f"{what} against T, one panel per mixer "
                                           f"({reference or 'no'} reference in grey): {title}."))
                doc.figure(figures[-1])


def _generation_section(doc: Doc, cells: pd.DataFrame, figures: list[Figure], baseline: str) -> None:
    """Decode cells (``reports/generation.py``): ms/token and state MB against T, crossovers."""
    from reports.generation import GENERATION_NOTE, decode_cells, generation_tables, plot_generation

    tables = generation_tables(cells, baseline)
    if not tables:
        return
    doc.h2("Generation", "generation")
    doc.p(GENERATION_NOTE)
    for (title, columns, rows), (group, part) in zip(tables, group_cells(decode_cells(cells))):
        doc.frame(Frame(columns, rows, caption=title))
        figures.append(make_figure(plot_generation(part), f"generation-{group_slug(group)}",
                               f"ms per generated token and state held against the context length: {title}."))
        doc.figure(figures[-1])


# --- renderers ----------------------------------------------------------------------------------
def _md_cell(v: Any) -> str:
    if isinstance(v, Flag):
        return f"**⚠ {_md_text(v.text)}**"
    if isinstance(v, Bold):
        return f"**{_md_text(v.text)}**"
    return _md_text(str(v))


def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _to_markdown(doc: Doc, title: str, intro: list[str]) -> str:
    out = [f"# {title}", ""] + [line + "\n" for line in intro]
    for kind, value in doc.blocks:
        if kind == "h2":
            out += [f"## {value[0]}", ""]
        elif kind == "h3":
            out += [f"### {value}", ""]
        elif kind == "p":
            out += [value, ""]
        elif kind == "ul":
            out += [f"- {item}" for item in value] + [""]
        elif kind == "consumption":
            out += [to_markdown(value)]
        elif kind == "frame":
            if value.caption:
                out += [f"*{_md_text(value.caption)}*", ""]
            out.append("| " + " | ".join(_md_text(c) or " " for c in value.columns) + " |")
            out.append("|" + "---|" * len(value.columns))
            out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in value.rows]
            out.append("")
        elif kind == "figure":
            out += [f"![{value.caption}](figures/{value.name}.png)", "", f"*{value.caption}* "
                    f"([SVG](figures/{value.name}.svg))", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
:root { --ink:#1d1d1f; --muted:#6b6b70; --rule:#dcdce0; --soft:#f6f6f8; --flag:#b3261e; --flagbg:#fdecea; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 0; background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 8px; padding-top: 12px; border-top: 1px solid var(--rule); }
h3 { font-size: 15px; margin: 22px 0 6px; }
p, li { max-width: 900px; }
.meta { color: var(--muted); margin: 0 0 12px; }
nav { margin: 14px 0 8px; display: flex; flex-wrap: wrap; gap: 6px 14px; }
nav a { color: #0b57d0; text-decoration: none; } nav a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 10px 0 6px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid var(--ink); font-weight: 600; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0 6px; }
table.consumption th.block { text-align: center; border-bottom: 1px solid var(--ink); }
table.consumption td.num, table.consumption th.num { text-align: right; white-space: nowrap; }
table.consumption tr.baseline th, table.consumption tr.baseline td { background: var(--soft); }
.ratio { color: var(--muted); font-size: 11.5px; }
table.consumption .ratio { display: block; line-height: 1.2; }
th.mixer { white-space: nowrap; }
thead th.mixer { vertical-align: bottom; }
td.oom { color: var(--flag); font-weight: 600; }
td.timeout, td.error { color: var(--flag); }
td.unsupported, td.skipped, td.missing { color: var(--muted); }
.flag { color: var(--flag); background: var(--flagbg); border-radius: 3px; padding: 0 4px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px;
          vertical-align: baseline; }
ul.notes { color: var(--muted); font-size: 12.5px; margin: 2px 0 18px; padding-left: 18px; }
.scroll { overflow-x: auto; }
figure { margin: 16px 0 26px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--soft); }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
code { background: var(--soft); padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
#broken { display: none; background: var(--flagbg); color: var(--flag); padding: 8px 12px; }
"""

# Marks the page when a figure fails to decode, for readers and for scripts/check_report_render.sh.
_SCRIPT = """
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (img) {
    return !img.complete || img.naturalWidth === 0;
  });
  document.documentElement.setAttribute('data-images', String(document.images.length));
  document.documentElement.setAttribute('data-broken-images', String(broken.length));
  if (broken.length) {
    var box = document.getElementById('broken');
    box.textContent = broken.length + ' figure(s) failed to load.';
    box.style.display = 'block';
  }
});
"""


def _html_cell(v: Any, column: str) -> str:
    if isinstance(v, Flag):
        return f'<td><span class="flag">⚠ {html.escape(v.text)}</span></td>'
    if isinstance(v, Bold):
        return f"<td><b>{html.escape(v.text)}</b></td>"
    text = html.escape(str(v))
    if column == "mixer" and text not in ("", "–"):
        text = f'<span class="swatch" style="background:{mixer_color(str(v))}"></span>{text}'
    return f"<td>{_inline_code(text)}</td>"


def _inline_code(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _to_html(doc: Doc, title: str, intro: list[str]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"] + [f'<p class="meta">{_inline_code(html.escape(line))}</p>' for line in intro]
    toc = [(a, t) for kind, v in doc.blocks if kind == "h2" for t, a in [v]]
    body.append("<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in toc) + "</nav>")
    body.append('<div id="broken"></div>')
    for kind, value in doc.blocks:
        if kind == "h2":
            body.append(f'<h2 id="{value[1]}">{html.escape(value[0])}</h2>')
        elif kind == "h3":
            body.append(f"<h3>{html.escape(value)}</h3>")
        elif kind == "p":
            body.append(f"<p>{_inline_code(html.escape(value))}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_code(html.escape(i))}</li>" for i in value) + "</ul>")
        elif kind == "consumption":
            body.append(f'<div class="scroll">{to_html(value)}</div>')
        elif kind == "frame":
            caption = f"<caption>{html.escape(value.caption)}</caption>" if value.caption else ""
            head = "".join(f"<th>{html.escape(c)}</th>" for c in value.columns)
            rows = "".join("<tr>" + "".join(_html_cell(v, c) for v, c in zip(row, value.columns)) + "</tr>"
                           for row in value.rows)
            body.append(f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif kind == "figure":
            data = base64.b64encode(value.png).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(value.caption)}">'
                        f"<figcaption>{html.escape(value.caption)} (figures/{value.name}.svg)</figcaption></figure>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n"
    )


# --- the entry point ----------------------------------------------------------------------------
def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """'html,md' -> ['html', 'md']; 'latex' is accepted for 'tex'. Unknown names raise."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        item = {"latex": "tex", "markdown": "md"}.get(item, item)
        if item not in FORMATS:
            raise ReportError(f"--format: expected a comma list of {', '.join(FORMATS)}, got {item!r}")
        if item not in out:
            out.append(item)
    if not out:
        raise ReportError(f"--format: expected a comma list of {', '.join(FORMATS)}, got nothing")
    return out


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    formats: str | Sequence[str] = ("html", "md"),
    baseline: str | None = None,
    declared: dict[str, dict[str, float]] | Callable[[], dict[str, dict[str, float]]] | None = None,
    title: str | None = None,
) -> Report:
    """Read profiles and write the report folder. Returns what was written.

    ``baseline``: the label (or mixer name) ratios and crossovers refer to; default: the sweep's
    own ``--baseline`` from its header, else ``softmax``. ``declared``: ``{mixer: {"time": k,
    "memory": k}}``, the spec's exponents, or a function returning them, called once the inputs
    have loaded (the CLI passes the registry's; fit records in the files take precedence, being
    what the sweep's code declared).
    """
    formats = parse_formats(formats)
    profiles = read_profiles(paths)
    runs_p = [p for p in profiles if p.has_cells]
    fidelity_frames = [p.fidelity.assign(run=p.name) for p in profiles if not p.fidelity.empty]
    from reports.quality import add_quality_section, read_quality  # quality records (`zoo quality`)

    quality = read_quality(p.path for p in profiles)
    for p in profiles:  # quality records are read here, not "of a kind this reader does not know"
        p.ignored -= quality.attrs.get("counts", {}).get(str(p.path), 0)
    cut = [text for text in map(cut_sweep, profiles) if text]
    if not runs_p and not fidelity_frames and quality.empty:
        names = ", ".join(str(p.path) for p in profiles)
        raise ReportError(f"{names}: no cell, fidelity or quality records "
                          + (f"({' '.join(cut)})" if cut else "(only headers: an interrupted or empty sweep?)"))
    baseline = baseline or _default_baseline(profiles)
    runs = [(p.name, p.cells.assign(run=p.name)) for p in runs_p]
    if len(runs) > 1:
        _check_common(runs)
        mixed = thread_mismatch(runs)
    fidelity = pd.concat(fidelity_frames, ignore_index=True) if fidelity_frames else pd.DataFrame()
    cells = pd.concat([c for _, c in runs], ignore_index=True) if runs else pd.DataFrame(columns=["run", "noisy", "mem_disagree"])

    warnings: list[str] = [mixed] if len(runs) > 1 and mixed else []
    busy = [text for text in map(busy_neighbours, runs_p) if text]
    warnings += cut + busy
    figures: list[Figure] = []
    doc = Doc()
    latex: list[str] = []
    _consumption_section(doc, runs, baseline, latex, cut + busy)
    _scaling_section(doc, runs, cells, figures, warnings, baseline)
    if runs:
        complexity_section(doc, runs, profiles, declared() if callable(declared) else declared, baseline)
    if runs:
        _generation_section(doc, cells, figures, baseline)
    _fidelity_section(doc, fidelity, figures)
    if not quality.empty:
        add_quality_section(doc, quality, cells, figures)
    if runs:
        _fairness_section(doc, runs)
    _environment_section(doc, profiles, cells)

    # everything is computed: only now touch the output folder
    out = Path(out_dir)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"--out: cannot create {out} ({exc.strerror or exc})") from None
    names = " vs ".join(name for name, _ in runs) or "fidelity"
    if runs and not fidelity.empty:
        names += " + fidelity"
    title = title or f"zoo report: {names}"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = [f"Generated {now} from {', '.join(f'`{p.path}`' for p in profiles)}; baseline: {baseline}."]
    files: dict[str, Path] = {}
    fig_paths: list[Path] = []
    for fig in figures:
        for ext, data in (("png", fig.png), ("svg", fig.svg)):
            path = out / "figures" / f"{fig.name}.{ext}"
            path.write_bytes(data)
            fig_paths.append(path)
    summary = _summary_csv(runs, baseline)
    files["csv"] = out / "summary.csv"
    summary.to_csv(files["csv"], index=False)
    if "md" in formats:
        files["md"] = out / "report.md"
        files["md"].write_text(_to_markdown(doc, title, intro), encoding="utf-8")
    if "html" in formats:
        files["html"] = out / "report.html"
        files["html"].write_text(_to_html(doc, title, intro), encoding="utf-8")
    if "tex" in formats:
        files["tex"] = out / "tables.tex"
        files["tex"].write_text("% booktabs tables generated by `zoo compare`\n" + "\n".join(latex), encoding="utf-8")
    return Report(out_dir=out, files=files, figures=fig_paths, warnings=warnings)

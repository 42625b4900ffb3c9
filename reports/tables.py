"""The consumption table of the efficient-attention papers (PoNet Table 2 layout), from records.

Rows are mixers, columns lengths, in two blocks: speed (steps/s for model scope, as the papers
report training speed; time per call for mixer scope) and peak memory. Each number carries its
ratio to the baseline in parentheses; a cell that did not produce a number says why (``OOM``,
``OOM†`` for an OOM inferred without running, ``timeout``, ``n/a``, ``error``). Per column the
best value is bold and the second underlined (ties share the mark: ranking uses the value as
printed, so two cells that read the same are never told apart); there is no ratio where the
baseline has no number. Rendered to Markdown, LaTeX and HTML.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from reports.cells import has_neighbours, is_contended, is_noisy, resolve_baseline, timing_mark
from reports.metrics import (
    MEMORY,
    SPEED,
    TIME,
    Metric,
    failure_text,
    format_number,
    format_ratio,
    group_cells,
    group_title,
    mixer_color,
    mixer_of,
)

__all__ = [
    "Entry",
    "Block",
    "ConsumptionTable",
    "consumption_table",
    "consumption_tables",
    "resolve_baseline",
    "run_comparison_table",
    "to_markdown",
    "to_latex",
    "to_html",
]


@dataclass
class Entry:
    """One table cell: the printed number (or failure), its ratio to the baseline, its rank mark."""

    text: str
    status: str
    value: float | None = None  # the number as printed (unit applied), for ranking
    ratio: float | None = None  # raw value / baseline raw value
    mark: str = ""  # "best", "second" or ""
    reason: str = ""
    noisy: bool = False  # IQR / median above the profiler's threshold: printed with a leading ~
    contended: bool = False  # timed while other processes used the cores: printed with a leading ≈
    neighbours: bool = False  # timed while other processes used the cores left free: a leading ≈ too

    @property
    def prefix(self) -> str:
        """'≈' for a timing on a shared machine (contended, or beside busy neighbours), '~' for a
        noisy one: not clean, never fitted (still ranked: the mark says how far to trust it)."""
        return timing_mark({"contended": self.contended, "neighbours": self.neighbours, "noisy": self.noisy})

    @property
    def ratio_text(self) -> str:
        return format_ratio(self.ratio) if self.ratio is not None else ""


@dataclass
class Block:
    """One metric over every length: 'Training speed (steps/s)' or 'Peak memory (MiB)'."""

    metric: Metric
    title: str
    unit: str
    entries: dict[tuple[str, int], Entry] = field(default_factory=dict)


@dataclass
class ConsumptionTable:
    title: str
    group: dict
    labels: list[str]
    lengths: list[int]
    blocks: list[Block]
    baseline: str | None  # the label ratios refer to (None: no baseline in this group)
    notes: list[str]

    def entry(self, block: int, label: str, T: int) -> Entry:
        return self.blocks[block].entries.get((label, T), Entry("–", "missing"))


def _rank(entries: list[Entry], higher_is_better: bool) -> None:
    ok = [e for e in entries if e.value is not None]
    values = sorted({e.value for e in ok}, reverse=higher_is_better)
    if len(ok) < 2:
        return
    for e in ok:
        if e.value == values[0]:
            e.mark = "best"
        elif len(values) > 1 and e.value == values[1] and len(ok) >= 3:
            e.mark = "second"


def _block(cells: pd.DataFrame, metric: Metric, labels, lengths, baseline) -> Block:
    values = metric.values(cells)
    unit, scale = metric.unit(values)
    scope, mode = cells["scope"].iloc[0], cells["mode"].iloc[0]
    if metric.name == "memory":
        title = f"Peak memory ({unit})"
    elif metric.name == "speed":
        title = ("Training" if mode == "train" else "Inference") + " speed (steps/s)"
    else:
        title = ("Time per training step" if mode == "train" else "Time per forward call") + f" ({unit})"
    block = Block(metric=metric, title=title, unit=unit)
    raw: dict[tuple[str, int], float] = {}
    for (label, T), row in cells.assign(_v=values).groupby(["label", "T"], sort=False):
        row = row.iloc[-1]
        v = row["_v"]
        if pd.notna(v):
            text = format_number(v / scale)
            timed = metric.name != "memory"  # memory readings do not suffer from a busy machine
            block.entries[(label, T)] = Entry(text, "ok", value=float(text.replace(",", "")),
                                              noisy=timed and is_noisy(row), contended=timed and is_contended(row),
                                              neighbours=timed and has_neighbours(row))
            raw[(label, T)] = float(v)
        else:
            reason = "" if pd.isna(row["reason"]) else str(row["reason"])
            block.entries[(label, T)] = Entry(failure_text(row), str(row["status"]), reason=reason)
    if baseline is not None:
        for (label, T), entry in block.entries.items():
            base = raw.get((baseline, T))
            if label != baseline and entry.value is not None and base:
                entry.ratio = raw[(label, T)] / base
    for T in lengths:
        _rank([block.entries[(label, T)] for label in labels if (label, T) in block.entries],
              metric.higher_is_better)
    return block


def consumption_table(cells: pd.DataFrame, baseline: str | None = "softmax", title: str = "") -> ConsumptionTable:
    """The table for one group of comparable cells (see :func:`reports.metrics.group_cells`)."""
    labels_all = sorted(cells["label"].unique(), key=str)
    base = resolve_baseline(labels_all, baseline)
    labels = ([base] if base else []) + [label for label in labels_all if label != base]
    lengths = sorted(int(t) for t in cells["T"].unique())
    scope = cells["scope"].iloc[0]
    speed = SPEED if scope == "model" else TIME
    blocks = [_block(cells, m, labels, lengths, base) for m in (speed, MEMORY)]
    notes = []
    if base is None:
        if baseline and any(mixer_of(label) == baseline for label in labels_all):
            notes.append(f"Several variants of baseline {baseline!r} ({', '.join(l for l in labels_all if mixer_of(l) == baseline)}): "
                         "pass one label with --baseline; no ratios shown.")
        elif baseline:
            notes.append(f"Baseline {baseline!r} is not in this table: no ratios shown.")
    else:
        direction = "speed-up" if speed is SPEED else "time"
        notes.append(f"In parentheses: {direction} and memory as a multiple of {base}'s at the same length "
                     "(none where the baseline has no number).")
    notes.append("Bold: best per column; underlined: second best.")
    if any(e.prefix == "~" for b in blocks for e in b.entries.values()):
        notes.append("~: a noisy timing (IQR / median above 10% after the repetition budget); see Environment.")
    if any(e.contended for b in blocks for e in b.entries.values()):
        notes.append("≈: timed while other processes used the cores (contended); see Environment.")
    if any(e.neighbours and not e.contended for b in blocks for e in b.entries.values()):
        notes.append("≈: timed while other processes used the cores the sweep left free (busy neighbours: they "
                     "share caches and memory bandwidth); see Environment.")
    if any(e.prefix for b in blocks for e in b.entries.values()):
        notes.append("Timings marked ~ or ≈ are not clean: left out of exponent verdicts and crossovers.")
    mem_methods = sorted(str(m) for m in cells["mem_method"].dropna().unique())
    if mem_methods:
        how = {"cuda": "CUDA max_memory_allocated above the pre-step baseline",
               "vmhwm": "growth of the process's resident high-water mark (VmHWM) during one step",
               "ru_maxrss": "ru_maxrss of a fresh process (not reset per step)"}
        notes.append("Memory: " + "; ".join(how.get(m, m) for m in mem_methods) + ".")
    texts = {e.text for b in blocks for e in b.entries.values()}
    if "OOM†" in texts:
        notes.append("OOM†: out of memory inferred (predicted over the budget, or a shorter length already ran out), not run.")
    if "n/a" in texts:
        notes.append("n/a: the mixer does not support this cell (e.g. a length above its maximum).")
    return ConsumptionTable(title=title, group={}, labels=labels, lengths=lengths, blocks=blocks,
                            baseline=base, notes=notes)


def consumption_tables(cells: pd.DataFrame, baseline: str | None = "softmax") -> list[ConsumptionTable]:
    """One table per group of comparable cells (environment, scope, mode, shape, dtype, device)."""
    groups = group_cells(cells)
    with_env = len({g["env_id"] for g, _ in groups}) > 1
    out = []
    for group, part in groups:
        table = consumption_table(part, baseline, title=group_title(group, with_env=with_env))
        table.group = group
        out.append(table)
    return out


def run_comparison_table(reference: pd.DataFrame, other: pd.DataFrame, reference_name: str,
                         other_name: str, baseline: str | None = None, title: str = "") -> ConsumptionTable:
    """The same cells measured in two runs: ``other``'s numbers with their ratio to ``reference``'s
    in parentheses (no best/second marks: the rows are not competing here). The baseline's row,
    if both runs have it, comes first as in the per-run tables."""
    common = sorted(set(reference["label"]) & set(other["label"]), key=str)
    base = resolve_baseline(common, baseline)
    labels = ([base] if base else []) + [label for label in common if label != base]
    lengths = sorted(set(int(t) for t in reference["T"]) & set(int(t) for t in other["T"]))
    scope = other["scope"].iloc[0]
    speed = SPEED if scope == "model" else TIME
    blocks = []
    for metric in (speed, MEMORY):
        mine = _block(other, metric, labels, lengths, None)
        ref = _block(reference, metric, labels, lengths, None)
        ref_raw = metric.values(reference).groupby([reference["label"], reference["T"]]).last()
        own_raw = metric.values(other).groupby([other["label"], other["T"]]).last()
        for key, entry in mine.entries.items():
            entry.mark = ""
            a, b = ref_raw.get(key), own_raw.get(key)
            if entry.value is not None and a is not None and pd.notna(a) and a > 0 and pd.notna(b):
                entry.ratio = float(b) / float(a)
        mine.entries = {k: e for k, e in mine.entries.items() if k in ref.entries}
        blocks.append(mine)
    direction = "speed" if speed is SPEED else "time"
    notes = [f"Numbers of {other_name}; in parentheses its {direction} and memory as a multiple of {reference_name}'s "
             "for the same cell (different environments: a ratio of machines and software, not of mixers)."]
    return ConsumptionTable(title=title, group={}, labels=labels, lengths=lengths, blocks=blocks,
                            baseline=None, notes=notes)


# --- Markdown -----------------------------------------------------------------------------------
def _md_entry(e: Entry) -> str:
    text = e.prefix + e.text
    if e.mark == "best":
        text = f"**{text}**"
    elif e.mark == "second":
        text = f"<u>{text}</u>"
    return f"{text} {e.ratio_text}".strip()


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def to_markdown(table: ConsumptionTable) -> str:
    """One Markdown table per block (Markdown has no two-level header), then the notes."""
    out = []
    if table.title:
        out.append(f"**{_md_escape(table.title)}**\n")
    for i, block in enumerate(table.blocks):
        out.append(f"*{block.title}*\n")
        out.append("| Mixer | " + " | ".join(str(T) for T in table.lengths) + " |")
        out.append("|:--|" + "--:|" * len(table.lengths))
        for label in table.labels:
            row = [_md_entry(table.entry(i, label, T)) for T in table.lengths]
            out.append(f"| {_md_escape(label)} | " + " | ".join(row) + " |")
        out.append("")
    out.extend(f"- {_md_escape(note)}" for note in table.notes)
    return "\n".join(out) + "\n"


# --- LaTeX --------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "×": r"$\times$", "†": r"$^\dagger$", "–": "--", "µ": r"$\mu$", "·": r"$\cdot$"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _tex_entry(e: Entry) -> str:
    text = {"≈": "$\\approx$", "~": "$\\sim$", "": ""}[e.prefix] + _tex(e.text)
    if e.mark == "best":
        text = rf"\textbf{{{text}}}"
    elif e.mark == "second":
        text = rf"\underline{{{text}}}"
    if e.ratio is not None:
        text += " " + _tex(e.ratio_text)
    return text


def to_latex(table: ConsumptionTable) -> str:
    """A booktabs table with the two metric blocks side by side, as in the papers."""
    n = len(table.lengths)
    cols = "l" + ("|" + "r" * n) * len(table.blocks)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{cols}}}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(b.title)}}}" for b in table.blocks) + r" \\")
    lines.append(" ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(table.blocks))))
    lines.append("Mixer & " + " & ".join(str(T) for _ in table.blocks for T in table.lengths) + r" \\")
    lines.append(r"\midrule")
    for label in table.labels:
        row = [_tex_entry(table.entry(i, label, T)) for i in range(len(table.blocks)) for T in table.lengths]
        lines.append(_tex(label) + " & " + " & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = _tex(table.title + ". " if table.title else "") + " ".join(_tex(note) for note in table.notes)
    lines += [rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- HTML ---------------------------------------------------------------------------------------
def _html_entry(e: Entry) -> str:
    text = e.prefix + html.escape(e.text)
    if e.mark == "best":
        text = f"<b>{text}</b>"
    elif e.mark == "second":
        text = f"<u>{text}</u>"
    ratio = f' <span class="ratio">{html.escape(e.ratio_text)}</span>' if e.ratio is not None else ""
    kind = "oom" if e.text.startswith("OOM") else ("" if e.status == "ok" else e.status)
    reason = e.reason or ("contended: timed while other processes used the cores" if e.contended
                          else "neighbours: timed while other processes used the cores left free" if e.neighbours
                          else "noisy: IQR / median above 10%" if e.noisy else "")
    title = f' title="{html.escape(reason)}"' if reason else ""
    return f'<td class="{("num " + kind).strip()}"{title}>{text}{ratio}</td>'


def swatch(label: str) -> str:
    """A coloured square in the mixer's plot colour, so tables and figures read together."""
    return f'<span class="swatch" style="background:{mixer_color(label)}"></span>'


def to_html(table: ConsumptionTable) -> str:
    """A ``<table>`` with a two-level header (metric block, then lengths) and notes below."""
    n = len(table.lengths)
    head1 = "".join(f'<th colspan="{n}" class="block">{html.escape(b.title)}</th>' for b in table.blocks)
    head2 = "".join(f'<th class="num">{T}</th>' for _ in table.blocks for T in table.lengths)
    rows = []
    for label in table.labels:
        tds = "".join(_html_entry(table.entry(i, label, T)) for i in range(len(table.blocks)) for T in table.lengths)
        cls = ' class="baseline"' if label == table.baseline else ""
        rows.append(f"<tr{cls}><th class=\"mixer\">{swatch(label)}{html.escape(label)}</th>{tds}</tr>")
    caption = f"<caption>{html.escape(table.title)}</caption>" if table.title else ""
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in table.notes)
    return (
        f'<table class="consumption">{caption}<thead><tr><th rowspan="2" class="mixer">Mixer</th>{head1}</tr>'
        f"<tr>{head2}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<ul class="notes">{notes}</ul>'
    )


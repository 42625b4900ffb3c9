"""The report as a list of blocks (headings, paragraphs, tables, figures), built once by the
sections and written to Markdown and HTML by ``reports.render``, so both formats say the same."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from reports.formats import format_length
from reports.metrics import group_title
from reports.tables import ConsumptionTable

__all__ = ["Flag", "Frame", "Figure", "Doc", "make_figure", "lengths_text", "group_heading"]


@dataclass
class Flag:
    """A table value to draw the reader's eye to (a disagreement, an unfair setting)."""

    text: str


@dataclass
class Bold:
    """A table value shown in bold (the best of its column)."""

    text: str


@dataclass
class Frame:
    """A plain table: columns and rows of str / Flag; a 'mixer' column gets colour swatches."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    name: str  # file stem under figures/
    caption: str
    png: bytes
    svg: bytes


@dataclass
class Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h2(self, text: str, anchor: str) -> None:
        self.blocks.append(("h2", (text, anchor)))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.blocks.append(("ul", items))

    def table(self, table: ConsumptionTable) -> None:
        self.blocks.append(("consumption", table))

    def frame(self, frame: Frame) -> None:
        self.blocks.append(("frame", frame))

    def figure(self, figure: Figure) -> None:
        self.blocks.append(("figure", figure))


def make_figure(fig, name: str, caption: str) -> Figure:
    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    fig.canvas.draw()  # one layout pass, reused by both files (a tight bbox per savefig draws twice)
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.08)
    fig.savefig(png, format="png", dpi=130, bbox_inches=bbox, facecolor="white")
    fig.savefig(svg, format="svg", bbox_inches=bbox, facecolor="white")
    plt.close(fig)
    return Figure(name=name, caption=caption, png=png.getvalue(), svg=svg.getvalue())


def lengths_text(lengths: Sequence[int]) -> str:
    if not lengths:
        return "–"
    return f"{format_length(min(lengths))}–{format_length(max(lengths))} ({len(lengths)} lengths)"


def group_heading(doc: Doc, run: str, group: dict, multi_run: bool, n_groups: int) -> None:
    if multi_run or n_groups > 1:
        doc.h3((f"{run} · " if multi_run else "") + group_title(group))

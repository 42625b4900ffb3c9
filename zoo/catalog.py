"""Human-readable views of the registry: `zoo list`, `zoo info` and the README table."""

from __future__ import annotations

from typing import Any

from zoo.base import config_fields
from zoo.registry import create_mixer, get_config, get_mixer_class, list_mixers


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def mixer_table(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered mixer matching ``pattern``."""
    rows = []
    for name in list_mixers(pattern):
        s = get_mixer_class(name).spec
        rows.append(
            {
                "name": name,
                "paper": s.title,
                "arxiv": s.arxiv or "-",
                "year": s.year,
                "time": str(s.time),
                "memory": str(s.memory),
                "causal": _yes(s.causal),
                "mask": _yes(s.key_padding_mask),
                "reduces length": _yes(s.reduces_length),
                "stochastic": _yes(s.stochastic),
            }
        )
    return rows


def render_markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no mixer matches)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def render_rich_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"zoo: {len(rows)} mixers", header_style="bold")
    cols = [c for c in (rows[0] if rows else {"name": 0})]
    for c in cols:
        table.add_column(c, overflow="fold", max_width=48 if c == "paper" else None)
    for r in rows:
        table.add_row(*(str(r[c]) for c in cols))
    Console().print(table)


def parameter_count(name: str, **overrides: Any) -> int:
    """Parameters of the mixer, counted on the meta device (no memory allocated)."""
    m = create_mixer(name, device="meta", **overrides)
    return sum(p.numel() for p in m.parameters())


def render_info(name: str, dim: int | None = None, heads: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    cls = get_mixer_class(name)
    spec = cls.spec
    config = get_config(name, **{k: v for k, v in (("dim", dim), ("heads", heads)) if v is not None})
    console = Console()
    console.print(f"[bold]{spec.name}[/bold]: {spec.title} ({spec.year}, arXiv {spec.arxiv or '-'})")
    for key, value in spec.summary().items():
        if key in ("name", "title", "year", "arxiv"):
            continue
        console.print(f"  {key:20s} {value}")
    fields = Table(title=f"{cls.Config.__name__} fields", header_style="bold")
    for c in ("field", "default", "meaning"):
        fields.add_column(c)
    for f in config_fields(cls.Config):
        fields.add_row(f["name"], repr(getattr(config, f["name"])), f["help"])
    console.print(fields)
    n = parameter_count(name, dim=config.dim, heads=config.heads)
    flops = spec.flops(config, 1, 4096)
    console.print(f"  parameters at dim={config.dim}, heads={config.heads}: {n:,}")
    console.print(f"  forward FLOPs (analytic) at B=1, T=4096: {flops / 1e9:.2f} GFLOP")

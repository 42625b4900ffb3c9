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
    """The README's table: ``reports.text.render_table`` in Markdown (one formatter for both)."""
    from reports.text import render_table

    return render_table(rows, "md")


def unknown_pattern_message(pattern: str) -> str:
    """'no mixer matches 'sofmax' (did you mean 'softmax'?)' for a pattern that matched nothing."""
    import difflib

    names = list_mixers()
    close = difflib.get_close_matches(pattern.replace("*", "").replace("?", ""), names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else f"; known mixers: {', '.join(names)}"
    return f"no mixer matches {pattern!r}{hint}"


def parameter_count(name: str, **overrides: Any) -> int:
    """Parameters of the mixer, counted on the meta device (no memory allocated)."""
    m = create_mixer(name, device="meta", **overrides)
    return sum(p.numel() for p in m.parameters())


def mixer_info(name: str, dim: int | None = None, heads: int | None = None) -> dict[str, Any]:
    """A mixer's spec, config fields (default and meaning) and counts, as plain data for
    ``reports.text.render_info`` (and ``zoo info --format json``)."""
    cls = get_mixer_class(name)
    config = get_config(name, **{k: v for k, v in (("dim", dim), ("heads", heads)) if v is not None})
    spec = cls.spec_for(config)  # as it holds for the default config (bigbird's class_from)
    summary = {k: v for k, v in spec.summary().items() if k not in ("name", "title", "year", "arxiv")}
    summary = {k: (", ".join(map(str, v)) or "-") if isinstance(v, (tuple, list)) else v for k, v in summary.items()}
    fields = [{"field": f["name"], "default": repr(getattr(config, f["name"])), "meaning": f["help"]}
              for f in config_fields(cls.Config)]
    counts = {
        f"parameters (dim={config.dim}, heads={config.heads})": f"{parameter_count(name, dim=config.dim, heads=config.heads):,}",
        "forward GFLOP (analytic, B=1, T=4096)": f"{spec.flops(config, 1, 4096) / 1e9:.2f}",
    }
    return {"name": spec.name, "title": spec.title, "year": spec.year, "arxiv": spec.arxiv,
            "spec": summary, "config_class": cls.Config.__name__, "config": fields, "counts": counts}

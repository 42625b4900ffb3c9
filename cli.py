"""`zoo` command line: parsing only; the work lives in zoo/, profiler/ and reports/.

User errors (a ZooError, or a bad option) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The efficient-attention zoo: list mixers, profile them over lengths, compare results.",
)


def _user_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from zoo.errors import ZooError

        try:
            return fn(*args, **kwargs)
        except ZooError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


@app.command("list")
@_user_errors
def list_cmd(
    pattern: str = typer.Argument("*", help="wildcard over mixer names, e.g. '*former'"),
    markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table (used for the README)"),
) -> None:
    """Table of every registered mixer: paper, year, complexity, capabilities."""
    from zoo.catalog import mixer_table, render_markdown_table, render_rich_table

    rows = mixer_table(pattern)
    if markdown:
        typer.echo(render_markdown_table(rows))
    else:
        render_rich_table(rows)


@app.command("info")
@_user_errors
def info_cmd(
    name: str = typer.Argument(..., help="mixer name (see `zoo list`)"),
    dim: Optional[int] = typer.Option(None, help="model width for the parameter count (default: config default)"),
    heads: Optional[int] = typer.Option(None, help="heads for the parameter count (default: config default)"),
) -> None:
    """A mixer's spec, config fields (defaults and meaning) and parameter count."""
    from zoo.catalog import render_info

    render_info(name, dim=dim, heads=heads)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

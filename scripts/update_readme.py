"""Regenerate the mixer table in README.md from the registry specs (`python scripts/update_readme.py`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START, END = "<!-- mixers:start -->", "<!-- mixers:end -->"


def generated_table() -> str:
    from zoo.catalog import mixer_table, render_markdown_table

    return render_markdown_table(mixer_table())


def render(readme: str) -> str:
    block = f"{START}\n{generated_table()}\n{END}"
    if START not in readme:
        raise SystemExit(f"README.md has no {START} marker")
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, readme, flags=re.S)


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")

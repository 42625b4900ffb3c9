"""The README's mixer table is generated from the specs; this keeps it in sync."""

from pathlib import Path

from scripts.update_readme import render

ROOT = Path(__file__).resolve().parent.parent


def test_readme_mixer_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert render(readme) == readme, "README mixer table is stale: run `python scripts/update_readme.py`"


def test_readme_starts_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    assert "bash scripts/main.sh" in head and "bash scripts/test.sh" in head

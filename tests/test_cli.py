"""`zoo list` / `zoo info`: output and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli import app
from zoo import list_mixers

runner = CliRunner()


def test_list_shows_every_mixer():
    result = runner.invoke(app, ["list", "--markdown"])
    assert result.exit_code == 0, result.output
    for name in list_mixers():
        assert f"| {name} |" in result.output


def test_info_shows_fields_and_parameter_count():
    result = runner.invoke(app, ["info", "softmax", "--dim", "512", "--heads", "8"])
    assert result.exit_code == 0, result.output
    assert "impl" in result.output and "'sdpa'" in result.output
    assert f"{4 * 512 * 512 + 4 * 512:,}" in result.output  # W_Q, W_K, W_V, W_O with biases


def test_info_unknown_mixer_is_one_line_exit_2():
    result = subprocess.run(
        [sys.executable, "-c", "from cli import app; app()", "info", "sofmax"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'softmax'" in lines[0].lower()
    assert "Traceback" not in result.stderr


def test_info_impossible_heads_exit_2():
    result = runner.invoke(app, ["info", "softmax", "--heads", "3"])
    assert result.exit_code == 2
    assert "heads: expected a divisor of dim=256" in result.output


# --- issue 14: the CLI in a terminal and in a pipe ----------------------------------------------
def _zoo(*args: str, columns: str | None = "80") -> subprocess.CompletedProcess:
    """The CLI in a fresh process with stdout piped (not a terminal), as `zoo list | cat` runs it."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-c", "from cli import app; app()", *args],
                          capture_output=True, text=True, env=env)


def test_list_piped_is_plain_text_with_whole_names_within_the_width():
    result = _zoo("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"zoo: {len(list_mixers())} mixers"
    assert not any(ch in result.stdout for ch in "┏┃│━─"), "a pipe gets plain ASCII layout, no box drawing"
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    header = lines[1].split()
    assert {"name", "time", "memory", "causal", "mask"} <= set(header)  # headers whole, never 'memor|y'
    firsts = [line.split()[0] for line in lines[3:3 + len(list_mixers())]]
    assert firsts == list_mixers()  # one row per mixer, every name whole on one line


def test_list_as_a_table_at_80_columns_cuts_titles_not_names(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["list", "--format", "table"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    for name in list_mixers():
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "not shown at 80 columns" in result.output and "paper" in result.output


def test_list_wide_terminal_shows_titles_and_one_match_is_singular(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["list", "pyramidion_block", "--format", "table"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "zoo: 1 mixer matching 'pyramidion_block'"
    assert "Sparsifying Transformer Models with Trainable Representation Pooling" in result.output
    assert "not shown" not in result.output


@pytest.mark.parametrize("pattern, hint", [("sofmax", "did you mean 'softmax'"), ("xyz*", "known mixers: ")])
def test_list_pattern_matching_nothing_is_one_line_exit_2(pattern, hint):
    result = _zoo("list", pattern)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no mixer matches {pattern!r}") and hint in lines[0]


def test_list_formats_md_csv_json():
    import csv
    import io
    import json

    md = runner.invoke(app, ["list", "--format", "md"]).output
    assert md == runner.invoke(app, ["list", "--markdown"]).output and "| softmax |" in md
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["list", "--format", "csv"]).output)))
    assert [r["name"] for r in rows] == list_mixers()
    assert rows[0]["paper"] == "Big Bird: Transformers for Longer Sequences"  # data formats never cut
    data = json.loads(runner.invoke(app, ["list", "*former", "--format", "json"]).output)
    assert [r["name"] for r in data] == list_mixers("*former") and data[0]["year"] == 2020


def test_list_and_info_reject_an_unknown_format():
    for args in (["list", "--format", "xml"], ["info", "softmax", "--format", "xml"]):
        result = _zoo(*args)
        assert result.returncode == 2
        assert result.stderr.strip() == "error: --format: expected one of auto, table, plain, md, csv, json; got 'xml'"


def test_info_formats(monkeypatch):
    import json

    monkeypatch.setenv("COLUMNS", "80")
    table = runner.invoke(app, ["info", "ponet", "--format", "table"]).output
    assert all(len(line) <= 80 for line in table.splitlines()), max(table.splitlines(), key=len)
    assert "segment_backend" in table and "PoNetConfig fields" in table
    data = json.loads(runner.invoke(app, ["info", "softmax", "--format", "json"]).output)
    assert data["name"] == "softmax" and any(f["field"] == "impl" for f in data["config"])
    csv_text = runner.invoke(app, ["info", "softmax", "--format", "csv"]).output
    assert csv_text.splitlines()[0] == "field,default,meaning"

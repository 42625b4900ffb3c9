"""`zoo quality`: a tiny quick run end to end, and bad input as one line on stderr, exit 2,
nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_quick_subset_runs_and_prints_the_table(tmp_path):
    out = tmp_path / "q.jsonl"
    result = CliRunner().invoke(app, ["quality", "--quick", "--tasks", "ends,mqar", "--mixers", "softmax,pyramidion",
                                      "--budget", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "ends T=32" in result.output and "chance" in result.output and "unsupported" in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["settings"]["preset"] == "quick"
    assert [x["status"] for x in lines[1:]] == ["ok", "ok", "ok", "unsupported"]
    result = CliRunner().invoke(app, ["quality", "--quick", "--tasks", "ends,mqar", "--mixers", "softmax,pyramidion",
                                      "--budget", "2", "--out", str(out), "--quiet", "--resume"])
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == len(lines) + 1  # only a header


def test_options_of_the_default_preset_reach_the_settings(tmp_path):
    """--no-token-shift, --lr-seeds all, --jobs and a per-task --budget land in the header and records."""
    out = tmp_path / "q.jsonl"
    result = CliRunner().invoke(app, ["quality", "--tasks", "ends", "--mixers", "softmax", "--lengths", "8", "--dim", "16",
                                      "--seeds", "2", "--lrs", "1e-3,3e-3", "--lr-seeds", "all", "--jobs", "1",
                                      "--no-token-shift", "--budget", "9,ends=2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    settings = lines[0]["settings"]
    assert (settings["lr_seeds"], settings["jobs"], settings["token_shift"], settings["cells"]) == (None, 1, False, 4)
    assert all(x["steps"] == 2 and x["model"]["token_shift"] is False for x in lines[1:])


@pytest.mark.parametrize("args, message", [
    (["--tasks", "mqr"], "Did you mean 'mqar'"),
    (["--tasks", "mqar", "--lengths", "8"], "needs T >= 24"),
    (["--tasks", "ends", "--mixers", "softmax", "--lengths", "8", "--budget", "0.000001s"], "cannot fit one training step"),
    (["--lrs", "fast"], "lrs: expected"),
    (["--quick", "--preset", "lra"], "--quick: conflicts"),
    (["--lr-seeds", "two"], "lr_seeds: expected a positive integer or all"),
    (["--jobs", "0"], "jobs: expected a positive integer"),
    (["--budget", "150,mqar=400,mqar=5"], "budget: expected one budget per task"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "q.jsonl"
    result = subprocess.run([sys.executable, "-c", "from cli import app; app()", "quality", *args, "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()

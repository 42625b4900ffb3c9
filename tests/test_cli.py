"""`zoo list` / `zoo info`: output and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

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

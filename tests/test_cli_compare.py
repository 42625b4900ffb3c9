"""`zoo compare` and `zoo fidelity`: the report folder, several runs, the no-file path, and one-line
errors with exit code 2; end to end on a tiny real sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from reports.synthetic import synthetic_records, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
MIXERS = {"softmax": (2.0, 2.0, 4e-9, 48.0), "ponet": (1.0, 1.0, 4e-5, 9000.0)}
LENGTHS = [512, 1024, 2048, 4096]


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("runs") / "cpu.jsonl", synthetic_records(MIXERS, LENGTHS))


def test_compare_writes_the_report_folder(profile, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", str(profile), "--out", str(out), "--format", "html,md,tex"])
    assert result.exit_code == 0, result.output
    for name in ("report.html", "report.md", "tables.tex", "summary.csv"):
        assert str(out / name) in result.output and (out / name).stat().st_size > 0
    assert len(list((out / "figures").glob("*.svg"))) == 3
    md = (out / "report.md").read_text()
    # the CLI passes the registry's declared classes: softmax's time is O(T^2)
    assert "| softmax | " in md and "O(T^2)" in md


def test_compare_two_runs_side_by_side(profile, tmp_path):
    fast = synthetic_records(MIXERS, LENGTHS, run_id="h", device_name="Fast GPU", fidelity=False)
    for rec in fast:
        if rec["kind"] == "cell" and rec["status"] == "ok":
            rec["time_median_s"] /= 2
            rec["time_samples"] = [s / 2 for s in rec["time_samples"]]
    other = write_jsonl(tmp_path / "h100.jsonl", fast)
    result = runner.invoke(app, ["compare", str(profile), str(other), "--out", str(tmp_path / "r"), "--format", "md"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "h100 vs cpu" in md and "(0.5×)" in md and "Fast GPU" in md


def _one_line_exit_2(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_compare_user_errors(profile, tmp_path):
    assert "no such file" in _one_line_exit_2(["compare", str(tmp_path / "missing.jsonl")])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert "not a zoo profile" in _one_line_exit_2(["compare", str(notes)])
    future = tmp_path / "future.jsonl"
    future.write_text(json.dumps({"kind": "header", "schema": 7}) + "\n")
    assert "unknown record schema: schema 7" in _one_line_exit_2(["compare", str(future)])
    elsewhere = write_jsonl(tmp_path / "small.jsonl", synthetic_records(MIXERS, [64, 128], fidelity=False))
    line = _one_line_exit_2(["compare", str(profile), str(elsewhere), "--out", str(tmp_path / "x")])
    assert "have no common cells" in line and "T 64–128" in line
    assert "--format: expected a comma list of html, md, tex, got 'pdf'" in _one_line_exit_2(
        ["compare", str(profile), "--format", "html,pdf"]
    )


def test_compare_missing_file_has_no_traceback():
    result = subprocess.run([sys.executable, "-c", "from cli import app; app()", "compare", "nope.jsonl"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: nope.jsonl: no such file"


def test_compare_without_files_runs_the_quick_sweep_then_fidelity(monkeypatch, tmp_path):
    import profiler
    import profiler.fidelity

    calls = []

    def fake_profile(**kwargs):
        calls.append(("profile", kwargs))
        records = [r for r in synthetic_records(MIXERS, LENGTHS) if r["kind"] != "fidelity"]
        return write_jsonl(kwargs["out"], records)

    def fake_fidelity(**kwargs):
        calls.append(("fidelity", kwargs))
        write_jsonl(kwargs["out"], [r for r in synthetic_records(MIXERS, LENGTHS, run_id="f") if r["kind"] != "cell"])
        return []

    monkeypatch.setattr(profiler, "run_profile", fake_profile)
    monkeypatch.setattr(profiler.fidelity, "run_fidelity", fake_fidelity)
    result = runner.invoke(app, ["compare", "--out", str(tmp_path), "--format", "md"])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["profile", "fidelity"] and calls[0][1]["preset"] == "quick"
    assert Path(calls[0][1]["out"]).parent == tmp_path and Path(calls[1][1]["out"]).parent == tmp_path
    md = (tmp_path / "report.md").read_text()
    assert "| ponet | 0.05 ± 0.005" in md and "Side by side" not in md


def test_end_to_end_on_a_tiny_sweep(tmp_path):
    """A real (tiny) sweep and fidelity run, then the report from both files."""
    sweep, fid, out = tmp_path / "tiny.jsonl", tmp_path / "fid.jsonl", tmp_path / "report"
    result = runner.invoke(app, [
        "profile", "--mixers", "softmax,performer", "--lengths", "32,64", "--mode", "forward", "--dim", "16",
        "--heads", "2", "--time-budget", "0.02", "--no-isolate", "--quiet", "--device", "cpu", "--out", str(sweep),
    ])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fidelity", "--mixers", "performer", "--lengths", "32", "--seeds", "1",
                                 "--dim", "16", "--heads", "2", "--device", "cpu", "--out", str(fid)])
    assert result.exit_code == 0, result.output
    assert "performer" in result.output and "rel. error" in result.output
    result = runner.invoke(app, ["compare", str(sweep), str(fid), "--out", str(out), "--format", "md"])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "| softmax |" in md and "| performer |" in md
    assert "Fidelity against exact softmax" in md and "(cos " in md
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2 * 2  # header + (2 mixers x 2 lengths)


def test_compare_runs_at_different_thread_counts_says_so(tmp_path):
    files = []
    for threads in (1, 2):
        records = synthetic_records(MIXERS, LENGTHS, run_id=f"t{threads}", fidelity=False)
        for rec in records:
            if rec["kind"] == "cell":
                rec["threads"] = threads
        files.append(str(write_jsonl(tmp_path / f"threads{threads}.jsonl", records)))
    result = runner.invoke(app, ["compare", *files, "--out", str(tmp_path / "r"), "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "warning: The runs were timed at different thread counts (threads1: 1 thread; threads2: 2 threads)" in result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "threads2 vs threads1" not in md

"""`zoo profile` through the CLI: user errors (one line, exit 2, nothing written), a tiny real CPU
sweep, and resuming a sweep killed mid-way (every cell present exactly once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from profiler.cases import parse_mixers, plan_cells
from profiler.records import read_records

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dim", "16", "--heads", "2", "--threads", "1", "--time-budget", "0.05"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["profile", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--mixers", "sofmax"], "Did you mean 'softmax'"),
        (["--mixers", "softmax[imp=eager]"], "unknown config key 'imp'"),
        (["--lengths", "1k..oops"], "lengths"),
        (["--lengths", "4k..1k"], "start <= end"),
        (["--heads", "3"], "divisor of dim"),
        (["--dim", "0"], "dim"),
        (["--mode", "backwards"], "mode"),
        (["--preset", "ponet-tabel2"], "Did you mean 'ponet-table2'"),
        (["--dtype", "fp8"], "dtype"),
        (["--memory-budget", "lots"], "memory budget"),
        (["--scope", "block"], "scope"),
        (["--cpu-heap", "jemalloc"], "cpu heap: expected one of managed, system"),
        (["--pad-fraction", "1.5"], "pad fraction: expected a number in [0, 1), got 1.5"),
        (["--timeout", "0"], "timeout: expected a positive number of seconds"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, expected):
    out = tmp_path / "p.jsonl"
    line = one_error_line(invoke("--mixers", "softmax", "--lengths", "16", *TINY, "--out", str(out), *args))
    assert expected in line
    assert not out.exists()  # nothing half-written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path):
    out = tmp_path / "p.jsonl"
    line = one_error_line(invoke("--mixers", "softmax", "--lengths", "16", "--device", "cuda", "--out", str(out)))
    assert "CUDA" in line and not out.exists()


def test_unwritable_out_and_existing_records(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = one_error_line(invoke("--mixers", "softmax", "--lengths", "16", *TINY, "--out", str(blocker / "p.jsonl")))
    assert "out:" in line
    line = one_error_line(invoke("--mixers", "softmax", "--lengths", "16", *TINY, "--out", str(tmp_path)))
    assert "directory" in line
    existing = tmp_path / "old.jsonl"
    existing.write_text('{"kind": "header", "schema": 1}\n')
    line = one_error_line(invoke("--mixers", "softmax", "--lengths", "16", *TINY, "--out", str(existing)))
    assert "--resume" in line and existing.read_text() == '{"kind": "header", "schema": 1}\n'


def test_tiny_cpu_sweep(tmp_path):
    out = tmp_path / "runs" / "tiny.jsonl"  # the folder is created
    result = invoke("--mixers", "softmax,softmax[impl=eager]", "--lengths", "16..64", "--mode", "forward", *TINY,
                    "--out", str(out), "--baseline", "softmax")
    assert result.exit_code == 0, result.output
    records = list(read_records(out))
    header = records[0]
    assert header["kind"] == "header" and header["schema"] == 1
    assert all(isinstance(a, str) for a in header["command"])
    env = header["env"]
    for key in ("python", "torch", "cpu_model", "threads", "git_commit", "git_dirty"):
        assert key in env
    assert env["threads"] == 1
    cells = [r for r in records if r["kind"] == "cell"]
    assert sorted((c["label"], c["T"]) for c in cells) == sorted(
        (label, T) for label in ("softmax", "softmax[impl=eager]") for T in (16, 32, 64)
    )
    for c in cells:
        assert c["status"] == "ok", c["reason"]
        assert c["time_median_s"] > 0 and c["time_n"] >= 3 and c["mem_method"] == "vmhwm"
        assert c["flops_analytic"] > 0 and c["params"] == 4 * (16 * 16 + 16)
        assert c["config"]["dim"] == 16 and c["depth"] is None
    eager = next(c for c in cells if c["label"] == "softmax[impl=eager]")
    assert eager["config"]["impl"] == "eager" and eager["overrides"] == {"impl": "eager"}
    assert eager["flops_counted"] == pytest.approx(eager["flops_analytic"], rel=0.01)
    sdpa = next(c for c in cells if c["label"] == "softmax")
    assert sdpa["sdpa_backend"] == "flash_cpu" and sdpa["flops_disagree"] is False
    fits = [r for r in records if r["kind"] == "fit"]
    assert {(f["label"], f["metric"]) for f in fits} >= {("softmax", "time"), ("softmax[impl=eager]", "time")}
    assert "softmax[impl=eager]" in result.output and "T=64" in result.output  # the end table


def test_resume_after_kill(tmp_path):
    """Kill a sweep mid-way (SIGKILL), resume it: every planned cell is in the file exactly once."""
    out = tmp_path / "r.jsonl"
    args = [sys.executable, str(ROOT / "cli.py"), "profile", "--mixers", "softmax", "--lengths", "16..128",
            "--mode", "both", "--dim", "16", "--heads", "2", "--threads", "1", "--time-budget", "0.05",
            "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    n = 0
    while time.monotonic() < deadline and proc.poll() is None:
        n = sum(1 for r in read_records(out) if r["kind"] == "cell")
        if n >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = [r for r in read_records(out) if r["kind"] == "cell"]
    assert 3 <= len(before) < 8
    with open(out, "rb") as fh:
        assert all(json.loads(line) for line in fh)  # only whole lines

    # resumed in process (--no-isolate): the same records, without a second worker start-up
    resumed = subprocess.run([*args, "--resume", "--no-isolate"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = list(read_records(out))
    headers = [r for r in records if r["kind"] == "header"]
    assert len(headers) == 2 and headers[1]["command"][1:3] == ["profile", "--mixers"]
    assert headers[1]["settings"]["resume"] is True
    keys = [r["key"] for r in records if r["kind"] == "cell"]
    planned = plan_cells(parse_mixers("softmax"), [16, 32, 64, 128], ("forward", "train"), scope="mixer",
                         batch=1, dim=16, heads=2, depth=None, dtype="fp32", device="cpu")
    assert sorted(keys) == sorted(c.key for c in planned)  # each exactly once
    assert [r["key"] for r in records if r["kind"] == "cell"][: len(before)] == [r["key"] for r in before]

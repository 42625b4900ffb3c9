"""The ``submitit`` executor through its local cluster (jobs as local processes, as where no
SLURM exists): the same cells and statuses as a sequential sweep, each once, with a job id, and a
job that dies recorded ``killed``. Skipped where submitit is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit", reason="the submitit extra is not installed (pip install -e '.[submitit]')")

from profiler.sweep import run_sweep  # noqa: E402
from tests.test_executors import BUILDER, cell, cell_records  # noqa: E402

pytestmark = pytest.mark.slow


def sweep(path: Path, cells, **kw) -> Path:
    run_sweep(cells, out=str(path), builder=BUILDER, predict=False, threads=1, time_budget=0.02, **kw)
    return path


def test_submitit_local_runs_each_cell_once(tmp_path):
    """One array of local jobs: an OOM (and the skip it implies), ok cells, and a job whose
    process dies mid-cell, recorded ``killed``; every cell once, with its job id."""
    marker = tmp_path / "marker"
    cells = [cell("x", 32, do="oom"), cell("y", 32), cell("victim", 32, do="kill_worker", marker=str(marker)),
             cell("x", 64), cell("y", 64)]
    opts = {"submitit_folder": str(tmp_path / "jobs"), "submitit_cluster": "local", "slurm_array_parallelism": 3}
    path = sweep(tmp_path / "s.jsonl", cells, executor="submitit", executor_options=opts)
    recs = cell_records(path)
    assert sorted(r["key"] for r in recs) == sorted(c.key for c in cells)
    by = {(r["label"], r["T"]): r for r in recs}
    assert {k: r["status"] for k, r in by.items()} == {
        ("x", 32): "oom", ("y", 32): "ok", ("victim", 32): "killed", ("x", 64): "skipped", ("y", 64): "ok"}
    assert "did not complete" in by[("victim", 32)]["reason"] and marker.exists()
    assert all(r.get("job_id") and r["host"] for r in recs if not r["inferred"])

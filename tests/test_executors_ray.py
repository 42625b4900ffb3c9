"""The ``ray`` executor on a small local cluster (2 CPUs, no dashboard, memory monitor off):
the same cell set and statuses as a sequential run, a killed worker retried or recorded
``killed`` (never lost or duplicated), resume across executors, host in every record.

Skipped where ray is not installed (``pip install -e '.[ray]'``; CI installs it in its own step).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from profiler.exec_ray import MEMORY_MONITOR_ENV  # noqa: E402
from profiler.sweep import run_sweep  # noqa: E402
from tests.test_executors import BUILDER, cell, cell_records  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU cluster for the module (a cluster start costs seconds)."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ[MEMORY_MONITOR_ENV] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT, MEMORY_MONITOR_ENV: "0"}})
    yield
    ray.shutdown()


def sweep(path: Path, cells, **kw) -> Path:
    run_sweep(cells, out=str(path), builder=BUILDER, predict=False, threads=1, time_budget=0.02, **kw)
    return path


def statuses(path: Path) -> dict:
    return {r["key"]: r["status"] for r in cell_records(path)}


def test_ray_equals_a_fork_sweep(cluster, tmp_path):
    cells = [cell(lab, T, m, **({"do": "oom"} if lab == "x" else {})) for T in (32, 64) for lab in ("x", "y")
             for m in ("forward", "train")]
    ray_path = sweep(tmp_path / "ray.jsonl", cells, executor="ray")
    fork_path = sweep(tmp_path / "fork.jsonl", cells, executor="fork")
    assert statuses(ray_path) == statuses(fork_path)  # same keys, same statuses
    recs = cell_records(ray_path)
    assert len(recs) == len(cells)
    ran = [r for r in recs if not r["inferred"]]
    assert all(r["host"] == socket.gethostname() and "gpu" in r for r in recs)
    assert all(r["executor_overhead_s"] is not None and r["executor_overhead_s"] >= 0 for r in ran)
    header = next(r for r in __import__("profiler.records").records.read_records(ray_path) if r["kind"] == "header")
    assert header["settings"]["executor"] == "ray"


def test_killed_worker_is_retried_once(cluster, tmp_path):
    marker = tmp_path / "marker"
    cells = [cell("a", 32), cell("victim", 32, do="kill_worker", marker=str(marker)), cell("b", 32)]
    path = sweep(tmp_path / "kill.jsonl", cells, executor="ray")
    recs = cell_records(path)
    assert marker.exists()  # the worker was killed mid-cell
    assert sorted(r["key"] for r in recs) == sorted(c.key for c in cells)  # none lost, none duplicated
    assert {r["label"]: r["status"] for r in recs} == {"a": "ok", "victim": "ok", "b": "ok"}


def test_killed_worker_without_retries_is_recorded_killed(cluster, tmp_path):
    marker = tmp_path / "marker"
    cells = [cell("victim", 32, do="kill_worker", marker=str(marker)), cell("b", 32)]
    path = sweep(tmp_path / "kill0.jsonl", cells, executor="ray", executor_options={"max_retries": 0})
    by = {r["label"]: r for r in cell_records(path)}
    assert len(cell_records(path)) == 2
    assert by["victim"]["status"] == "killed" and "Ray worker running the cell died" in by["victim"]["reason"]
    assert by["b"]["status"] == "ok"


def test_resume_fork_then_ray(cluster, tmp_path):
    cells = [cell(lab, T) for T in (32, 64) for lab in ("a", "b")]
    path = sweep(tmp_path / "resume.jsonl", cells[:2], executor="fork")
    first = {r["key"]: r["run_id"] for r in cell_records(path)}
    sweep(path, cells, executor="ray", resume=True)
    recs = cell_records(path)
    assert sorted(r["key"] for r in recs) == sorted(c.key for c in cells)
    assert all(r["run_id"] == first[r["key"]] for r in recs if r["key"] in first)  # not re-run

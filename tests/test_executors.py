"""Executors that fan cells out (profiler/fanout.py) with a fake executor, the distributed
executors' options and their missing-extra errors, and host/gpu in every record.

Ray itself on a local cluster: tests/test_executors_ray.py (skipped where ray is absent).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.builders import Step
from profiler.cases import Cell
from profiler.exec_options import executor_options
from profiler.executors import make_executor
from profiler.fanout import waves
from profiler.records import read_records
from profiler.sweep import run_sweep
from zoo.errors import ZooValueError

BUILDER = f"{Path(__file__).resolve()}:build_cell"
ROOT = Path(__file__).resolve().parent.parent


def build_cell(cell: Cell, device, dtype) -> Step:
    """``cell.extra["do"]``: ok, oom (an allocator error), kill_worker (SIGKILL the process that
    supervises this cell's executor, once: a marker file says it was done)."""
    import os
    import signal

    do = cell.extra.get("do", "ok")
    a = torch.randn(16, 16, dtype=dtype, device=device)
    if do == "oom":
        def fn():
            raise torch.OutOfMemoryError("simulated allocator failure")
    elif do == "kill_worker":
        marker = Path(cell.extra["marker"])

        def fn():
            if not marker.exists():
                marker.write_text("killed once")
                os.kill(int(os.environ["ZOO_PROFILER_PARENT"]), signal.SIGKILL)  # the Ray worker / job
            return a @ a
    else:
        def fn():
            return a @ a
    return Step(fn=fn, params=0)


def cell(label: str, T: int, mode: str = "forward", **extra) -> Cell:
    return Cell(label=label, mixer="dummy", overrides={}, config={}, scope="mixer", mode=mode, T=T, batch=1, dim=16,
                heads=1, depth=None, dtype="fp32", device="cpu", extra={"do": "ok", **extra})


def cell_records(path: Path) -> list[dict]:
    return [r for r in read_records(path) if r["kind"] == "cell"]


class FakeFanout:
    """Runs cells in process, yields them in reverse order, one twice, and ``drop`` never."""

    name = "fake"
    fans_out = True

    def __init__(self, drop: str | None = None):
        self.drop, self.batches = drop, []
        self.inner = make_executor("inline", isolate=False, device="cpu")

    def submit_all(self, items, timeout):
        self.batches.append([(c.label, c.T, c.mode) for c, _ in items])
        results = [(i, {**self.inner.run(c, o, timeout), "host": "fakehost", "worker_wall_s": 0.01})
                   for i, (c, o) in enumerate(items) if c.label != self.drop]
        for i, r in reversed(results):
            yield i, r
        if results:
            yield results[0]  # a duplicate (e.g. a retried task that had in fact finished)

    def close(self):
        pass


def run_fake(tmp_path: Path, cells: list[Cell], fake: FakeFanout, monkeypatch, **kw) -> Path:
    monkeypatch.setattr("profiler.sweep.make_executor", lambda *a, **k: fake)
    out = tmp_path / "fake.jsonl"
    run_sweep(cells, out=str(out), builder=BUILDER, predict=False, threads=1, time_budget=0.02, **kw)
    return out


def test_waves_are_lengths_then_modes():
    cs = [cell(lab, T, m) for T in (64, 32) for lab in ("a", "b") for m in ("train", "forward")]
    got = [[(c.T, c.mode) for c in w] for w in waves(cs)]
    assert got == [[(32, "forward")] * 2, [(32, "train")] * 2, [(64, "forward")] * 2, [(64, "train")] * 2]


def test_fanout_writes_each_cell_once_and_fills_missing(tmp_path, monkeypatch):
    cells = [cell(lab, T, m) for T in (32, 64) for lab in ("a", "b", "gone") for m in ("forward", "train")]
    out = run_fake(tmp_path, cells, FakeFanout(drop="gone"), monkeypatch)
    recs = cell_records(out)
    assert sorted(r["key"] for r in recs) == sorted(c.key for c in cells)  # each once, none lost
    by = {(r["label"], r["T"], r["mode"]): r for r in recs}
    assert all(by[(lab, T, m)]["status"] == "ok" for lab in "ab" for T in (32, 64) for m in ("forward", "train"))
    gone = [r for r in recs if r["label"] == "gone"]
    assert {r["status"] for r in gone} == {"error"} and all("returned no result" in r["reason"] for r in gone)
    assert {r["host"] for r in recs if r["label"] != "gone"} == {"fakehost"}
    assert all("host" in r and "gpu" in r for r in recs)


def test_fanout_frontier_matches_sequential(tmp_path, monkeypatch):
    """An OOM at T=32 forward skips that series' train at 32 and everything at 64, as in fork."""
    cells = [cell(lab, T, m, **({"do": "oom"} if lab == "x" else {})) for T in (32, 64) for lab in ("x", "y")
             for m in ("forward", "train")]
    fake = FakeFanout()
    out = run_fake(tmp_path, cells, fake, monkeypatch)
    seq = tmp_path / "seq.jsonl"
    run_sweep(cells, out=str(seq), builder=BUILDER, predict=False, threads=1, time_budget=0.02, isolate=False)
    status = lambda p: {(r["label"], r["T"], r["mode"]): r["status"] for r in cell_records(p)}  # noqa: E731
    assert status(out) == status(seq)
    assert status(out)[("x", 64, "train")] == "skipped"
    assert fake.batches[1] == [("y", 32, "train")]  # x's train at 32 was decided, not sent


def test_resume_across_executors(tmp_path, monkeypatch):
    cells = [cell(lab, T) for T in (32, 64) for lab in ("a", "b")]
    out = tmp_path / "fake.jsonl"
    run_sweep(cells[:2], out=str(out), builder=BUILDER, predict=False, threads=1, time_budget=0.02, isolate=False)
    fake = FakeFanout()
    run_fake(tmp_path, cells, fake, monkeypatch, resume=True)
    assert fake.batches == [[("a", 64, "forward"), ("b", 64, "forward")]]  # only the missing cells
    recs = cell_records(out)
    assert sorted(r["key"] for r in recs) == sorted(c.key for c in cells)


def test_executor_options_belong_to_their_executor():
    assert executor_options("ray", ray_address="auto", slurm_partition=None) == {"ray_address": "auto"}
    with pytest.raises(ZooValueError, match="--slurm-partition: belongs to --executor submitit"):
        executor_options("ray", slurm_partition="gpu")
    with pytest.raises(ZooValueError, match="--ray-cpus: expected a positive integer"):
        executor_options("ray", ray_cpus=0)


@pytest.mark.parametrize("name, module", [("ray", "ray"), ("submitit", "submitit")])
def test_missing_extra_is_one_line(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ZooValueError, match=rf"executor: {name} is not installed; pip install -e '\.\[{name}\]'"):
        make_executor(name, isolate=True, device="cpu", options={"threads": 1})


def test_unknown_executor_is_one_line():
    with pytest.raises(ZooValueError, match="executor: expected one of fork, spawn, inline, ray, submitit"):
        make_executor("dask", isolate=True, device="cpu")


def test_sequential_records_have_host_and_gpu(tmp_path):
    import socket

    out = tmp_path / "seq.jsonl"
    run_sweep([cell("a", 32)], out=str(out), builder=BUILDER, predict=False, threads=1, time_budget=0.02, isolate=False)
    (rec,) = cell_records(out)
    assert rec["host"] == socket.gethostname() and rec["gpu"] is None


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_executor_option_errors(tmp_path):
    r = cli("profile", "--mixers", "softmax", "--lengths", "64", "--executor", "fork", "--ray-address", "auto",
            "--out", str(tmp_path / "x.jsonl"), "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --ray-address: belongs to --executor ray, got --executor fork"]
    r = cli("profile", "--mixers", "softmax", "--lengths", "64", "--executor", "dask", "--out", str(tmp_path / "y.jsonl"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "executor: expected one of" in r.stderr
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "y.jsonl").exists()


def test_report_groups_cells_by_the_gpu_that_ran_them(tmp_path):
    """A Ray sweep over two GPU types: the report's comparison groups split by each cell's gpu."""
    import json

    from reports import read_profile

    out = tmp_path / "mixed.jsonl"
    run_sweep([cell("a", 32), cell("b", 32)], out=str(out), builder=BUILDER, predict=False, threads=1,
              time_budget=0.02, isolate=False)
    lines = out.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r, gpu in zip([r for r in recs if r["kind"] == "cell"], ("NVIDIA H100", "NVIDIA A100")):
        r["gpu"] = gpu
    out.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    envs = read_profile(out).cells.set_index("label")["env_id"]
    assert envs["a"].startswith("NVIDIA H100 | torch") and envs["b"].startswith("NVIDIA A100 | torch")

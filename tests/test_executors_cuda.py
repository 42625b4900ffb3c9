"""CUDA-only checks of the scale-out work (marked ``cuda``; ``scripts/gpu_check.sh`` runs them,
elsewhere they are skipped with the reason): records name the GPU that ran them, the projection's
peak memory against ``max_memory_allocated``, and the Ray executor's one GPU per cell."""

from __future__ import annotations

import pytest
import torch

from profiler import run_profile
from profiler.records import read_records

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bash scripts/gpu_check.sh)")]


def cells(path):
    return [r for r in read_records(path) if r["kind"] == "cell"]


def test_cuda_records_name_the_gpu(tmp_path):
    path = run_profile(mixers="softmax", lengths="1k", modes="forward", device="cuda", dtype="bf16", time_budget=0.1,
                       out=tmp_path / "p.jsonl", progress=False)
    (rec,) = cells(path)
    assert rec["status"] == "ok" and rec["mem_method"] == "cuda"
    assert rec["gpu"] == torch.cuda.get_device_name(0) and rec["host"]


def test_projected_memory_within_10_percent_of_cuda(tmp_path):
    """Eager softmax runs the same ops on either dispatch: the fake pass's peak (CPU dispatch)
    must match the allocator's peak on the GPU."""
    from profiler.devices import get_device, key_for_gpu
    from profiler.project_run import measured_cells
    from profiler.project import project_cells

    path = run_profile(mixers="softmax[impl=eager]", lengths="4k", modes="forward,train", device="cuda",
                       dtype="fp32", time_budget=0.1, out=tmp_path / "m.jsonl", progress=False)
    todo, measured = measured_cells(path)
    device = get_device(key_for_gpu(torch.cuda.get_device_name(0)) or "h100")
    projected = {r["key"]: r for r in project_cells(todo, device)}
    for m in measured:
        p = projected[m["key"]]
        assert abs(p["mem_peak_bytes"] / m["mem_peak_bytes"] - 1) <= 0.10, (m["mode"], p["mem_peak_bytes"], m["mem_peak_bytes"])


def test_ray_gives_each_cuda_cell_a_gpu(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    path = run_profile(mixers="softmax,ponet", lengths="1k", modes="forward", device="cuda", dtype="bf16",
                       time_budget=0.1, executor="ray", out=tmp_path / "r.jsonl", progress=False)
    recs = cells(path)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    assert all(r["gpu"] and r["gpu_visible"] not in (None, "") for r in recs)

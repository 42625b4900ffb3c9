"""The CPU heap modes of a measurement and blocked timing (profiler/heap.py, profiler.timing).

The heap mode is process-wide, so the resident-memory checks run in a child interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from profiler.heap import CPU_HEAP_CHOICES, current_heap_mode, set_heap_mode
from profiler.builders import Step
from profiler.timing import time_calls

ROOT = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(set_heap_mode("tracking") != "tracking", reason="needs glibc's mallopt")


def _child(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_heap_mode_names():
    assert set(CPU_HEAP_CHOICES) == {"managed", "system"}
    assert set_heap_mode("system") == "system"
    with pytest.raises(ValueError, match="cpu heap: expected one of tracking, caching, system, got 'fast'"):
        set_heap_mode("fast")


@glibc
def test_tracking_heap_returns_freed_blocks_and_caching_heap_keeps_them():
    """After freeing 16 x 4 MiB blocks, RSS falls back in the tracking heap (so VmHWM growth is the
    live peak) and stays up in the caching heap (so the next call takes no page faults)."""
    out = _child(
        """
        import json, ctypes
        from profiler.heap import set_heap_mode, release_heap
        from profiler.memory import status_bytes as _status_bytes
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def grow_and_free():
            ptrs = [libc.malloc(4 << 20) for _ in range(16)]
            for p in ptrs:
                ctypes.memset(p, 1, 4 << 20)
            peak = _status_bytes("VmRSS")
            for p in reversed(ptrs):
                libc.free(p)
            return peak, _status_bytes("VmRSS")
        res = {}
        for mode in ("tracking", "caching"):
            assert set_heap_mode(mode) == mode
            release_heap()
            base = _status_bytes("VmRSS")
            peak, after = grow_and_free()
            res[mode] = [(peak - base) / 2**20, (after - base) / 2**20]
        print(json.dumps(res))
        """
    )
    grown, kept = out["tracking"]
    assert grown >= 60 and kept < 8, out
    grown, kept = out["caching"]
    assert grown >= 60 and kept >= 60, out


def test_blocked_timing_averages_short_calls(monkeypatch):
    """A clock that charges exactly 1 ms per call, so the block logic is checked without depending
    on how busy the machine is (a real 1 ms busy-wait stretches when the core is shared)."""
    import profiler.timing as timing

    calls = []

    def fast():
        calls.append(1)

    def clock_for(device):
        def clock(fn):
            before = len(calls)
            fn()
            return 0.001 * (len(calls) - before)

        return clock

    monkeypatch.setattr(timing, "timer", clock_for)
    info = {}
    samples = time_calls(fast, budget_s=0.3, min_block_s=0.01, info=info)
    assert info["block"] == 10  # 10 calls of 1 ms make a 10 ms block
    # three single calls sized the block, a run of a quarter of it confirmed it: nothing else uncounted
    assert len(calls) == 3 + info["block"] // 4 + info["block"] * len(samples)
    assert samples and all(s == pytest.approx(0.001) for s in samples)  # seconds per call, not per block


def test_blocked_timing_keeps_long_calls_single():
    def slow():
        time.sleep(0.03)

    info = {}
    samples = time_calls(slow, budget_s=0.05, min_reps=3, min_block_s=0.01, info=info)
    assert info["block"] == 1 and len(samples) >= 3  # the sizing call is the first sample (one is enough)
    assert all(0.029 < s < 0.2 for s in samples)


def test_measured_cell_records_heap_block_and_phases(tmp_path):
    """A real CPU cell through the in-process runner: the record says which heap each pass used,
    how many calls each timing sample averages and where the wall time went."""
    from profiler import load_results, run_profile

    out = tmp_path / "r.jsonl"
    run_profile(mixers="ponet", lengths="256", modes="forward", dim=32, heads=2, device="cpu", out=out, isolate=False,
                time_budget=0.05, threads=1, progress=False)
    df = load_results(out)
    rec = df.iloc[0]
    assert rec["status"] == "ok"
    glibc_heap = set_heap_mode("tracking") == "tracking"
    expected = {"memory": "tracking", "timing": "caching"} if glibc_heap else {"memory": "system", "timing": "system"}
    assert rec["cpu_heap"] == expected
    assert rec["time_block"] >= 1
    assert set(rec["phase_s"]) == {"predict", "build", "first_call", "memory", "warmup", "timing"}
    assert rec["warmup_calls"] >= 2  # after the first call: the memory pass, >= 1 call in the caching heap


def test_system_heap_is_recorded(tmp_path):
    from profiler import load_results, run_profile

    out = tmp_path / "r.jsonl"
    run_profile(mixers="fnet", lengths="128", modes="forward", dim=32, heads=2, device="cpu", out=out, isolate=False,
                time_budget=0.05, threads=1, progress=False, cpu_heap="system")
    rec = load_results(out).iloc[0]
    assert rec["status"] == "ok" and rec["cpu_heap"] == {"memory": "system", "timing": "system"}


def _dummy_cell():
    from profiler.cases import Cell

    return Cell(label="dummy", mixer="dummy", overrides={}, config={}, scope="mixer", mode="forward", T=64, batch=1,
                dim=64, heads=1, depth=None, dtype="fp32", device="cpu")


def _run_dummy(tmp_path, builder: str, **kwargs) -> dict:
    """One forward cell of a test builder in this process; its record."""
    from profiler.records import read_records
    from profiler.sweep import run_sweep

    out = tmp_path / "r.jsonl"
    run_sweep([_dummy_cell()], out=out, builder=f"{Path(__file__).resolve()}:{builder}", predict=False, isolate=False,
              threads=1, time_budget=0.05, **kwargs)
    return next(r for r in read_records(out) if r.get("kind") == "cell")


def _builder_module():
    """The test file as the runner's load_builder imported it (its own module globals)."""
    return sys.modules[f"_zoo_builder_{Path(__file__).resolve().stem}"]


def build_fails_in_caching_heap(cell, device, dtype):
    """A step that runs out of memory whenever the caching heap is in force (a cell whose peak
    fits the budget but whose caching-heap footprint does not)."""
    import torch

    x = torch.ones(64, dtype=dtype)

    def step():
        if current_heap_mode() == "caching":
            raise MemoryError("simulated: the caching heap's footprint exceeds the budget")
        return x * 2

    return Step(step, params=0, flops_analytic=64.0)


@glibc
def test_caching_heap_oom_falls_back_to_tracking_heap(tmp_path):
    rec = _run_dummy(tmp_path, "build_fails_in_caching_heap")
    assert rec["status"] == "ok", rec["reason"]
    assert rec["cpu_heap"] == {"memory": "tracking", "timing": "tracking"}
    assert current_heap_mode() == "tracking"  # left as the memory pass expects it


_BUFFERS: list = []  # weakrefs to every call's buffer
_HELD: list = []  # per successful call: buffers of earlier calls still alive when it started


def build_pins_memory_when_failing(cell, device, dtype):
    """A step whose caching-heap call fails with a 16 MiB buffer alive in its frame: a retry
    inside the ``except`` block would still hold it (through the traceback)."""
    import weakref

    import torch

    def step():
        alive = sum(1 for ref in _BUFFERS if ref() is not None)
        buf = torch.ones(4 * 2**20, dtype=torch.float32)  # alive in this frame
        _BUFFERS.append(weakref.ref(buf))
        if current_heap_mode() == "caching":
            raise MemoryError("simulated: out of memory with a buffer held by this frame")
        _HELD.append(alive)
        return buf[:1] * 2

    return Step(step, params=0, flops_analytic=1.0)


@glibc
def test_caching_heap_retry_does_not_hold_the_failed_call(tmp_path):
    rec = _run_dummy(tmp_path, "build_pins_memory_when_failing")
    assert rec["status"] == "ok", rec["reason"]
    assert rec["cpu_heap"]["timing"] == "tracking"
    held = _builder_module()._HELD
    assert len(held) >= 4 and max(held) == 0, held  # no call started with an earlier call's buffer alive


_MODES_SEEN: list = []


def build_8mib_step(cell, device, dtype):
    import torch

    def step():
        _MODES_SEEN.append(current_heap_mode())
        return torch.ones(2 * 2**20, dtype=torch.float32).sum()  # an 8 MiB temporary

    return Step(step, params=0, flops_analytic=1.0)


@glibc
@pytest.mark.parametrize("budget_mib, timing_heap", [(16, "tracking"), (64, "caching")])
def test_large_steps_are_timed_in_the_tracking_heap(tmp_path, budget_mib, timing_heap):
    """3x the measured step peak (8 MiB) must fit the memory budget for the caching heap."""
    if f"_zoo_builder_{Path(__file__).resolve().stem}" in sys.modules:
        _builder_module()._MODES_SEEN.clear()
    rec = _run_dummy(tmp_path, "build_8mib_step", memory_budget=budget_mib * 2**20)
    assert rec["status"] == "ok", rec["reason"]
    assert 7 * 2**20 <= rec["mem_peak_bytes"] < 12 * 2**20  # page granularity
    assert rec["cpu_heap"] == {"memory": "tracking", "timing": timing_heap}
    modes = _builder_module()._MODES_SEEN
    assert ("caching" in modes) == (timing_heap == "caching"), modes  # never tried when it cannot fit


def test_run_sweep_rejects_an_unknown_heap_before_writing(tmp_path):
    from profiler.sweep import run_sweep
    from zoo.errors import ZooValueError

    out = tmp_path / "r.jsonl"
    with pytest.raises(ZooValueError, match="cpu heap: expected one of managed, system, got 'jemalloc'"):
        run_sweep([_dummy_cell()], out=out, builder=f"{Path(__file__).resolve()}:build_8mib_step", isolate=False,
                  cpu_heap="jemalloc")
    assert not out.exists()

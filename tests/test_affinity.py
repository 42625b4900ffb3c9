"""Pinning a CPU cell to the quietest cores (profiler/affinity.py) and the cell's record of it.

Nothing here assumes the machine is quiet: the choice is tested on scripted counters, the pinning
on the real affinity mask (Linux), and the cell only for fields that agree with each other."""

from __future__ import annotations

import os

import pytest

from profiler.affinity import free_cpus, per_cpu_busy, pin_quietest, quietest, restore

linux_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")


def test_quietest_picks_the_least_busy_cpus_and_breaks_ties_by_id():
    before = {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0}
    after = {0: 150.0, 1: 101.0, 2: 100.0, 3: 100.0}  # cpu0 busy, cpu1 a little, 2 and 3 idle
    assert quietest(1, frozenset(before), before, after) == [2]
    assert quietest(2, frozenset(before), before, after) == [2, 3]
    assert quietest(3, frozenset(before), before, after) == [1, 2, 3]
    assert quietest(1, frozenset({0, 1}), before, after) == [1]  # only the allowed CPUs


@pytest.mark.parametrize("n", [0, 3, -1])
def test_quietest_bad_count_names_the_argument(n):
    with pytest.raises(ValueError, match=r"n: expected 1\.\.2"):
        quietest(n, frozenset({0, 1}), {0: 0.0, 1: 0.0}, {0: 0.0, 1: 0.0})


def test_per_cpu_busy_reads_every_cpu_line_but_the_total(tmp_path):
    (tmp_path / "stat").write_text(
        "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 4 1 2 50 9 1 1 1 0 0\ncpu1 6 0 8 50 0 0 0 0 0 0\nintr 1 2\n")
    assert per_cpu_busy(str(tmp_path)) == {0: 4 + 1 + 2 + 1 + 1 + 1, 1: 14.0}
    assert per_cpu_busy(str(tmp_path / "missing")) is None


@linux_affinity
def test_pin_quietest_pins_every_thread_and_restore_gives_the_mask_back():
    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs 2 usable CPUs")
    busy = max(allowed)
    reads = iter([{c: 0.0 for c in allowed}, {c: (50.0 if c == busy else 0.0) for c in allowed}])
    got = pin_quietest(1, read=lambda: next(reads), sleep=lambda s: None)
    try:
        assert got is not None
        cpus, previous = got
        assert previous == allowed and len(cpus) == 1 and busy not in cpus
        assert set(os.sched_getaffinity(0)) == set(cpus)
        assert free_cpus() == allowed - set(cpus)  # the cores left to others, read by the probe
    finally:
        restore(got[1] if got else None)
    assert frozenset(os.sched_getaffinity(0)) == allowed
    assert free_cpus() == frozenset()  # not pinned: no cores were left free


@linux_affinity
def test_pin_quietest_leaves_a_cell_that_needs_every_core_alone():
    allowed = frozenset(os.sched_getaffinity(0))
    assert pin_quietest(len(allowed), read=lambda: pytest.fail("must not read"), sleep=lambda s: None) is None
    assert frozenset(os.sched_getaffinity(0)) == allowed


def test_pin_quietest_without_counters_pins_nothing():
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable CPUs")
    allowed = frozenset(os.sched_getaffinity(0))
    assert pin_quietest(1, read=lambda: None, sleep=lambda s: None) is None
    assert frozenset(os.sched_getaffinity(0)) == allowed


@linux_affinity
@pytest.mark.parametrize("mode", ["forward", "decode"])
def test_an_in_process_cell_records_its_cpus_and_contention_then_restores_the_mask(mode):
    """A one-thread CPU cell with the probe on pins itself (when it has a spare core), records the
    CPUs with its contention fields (decode cells too), and an in-process caller keeps its mask."""
    from profiler.cases import Cell
    from profiler.cell import measure_cell
    from profiler.settings import CONTENTION_PROBE

    allowed = frozenset(os.sched_getaffinity(0))
    mixer = "transnormer"
    cell = Cell(label=mixer, mixer=mixer, overrides={}, config={}, scope="mixer", mode=mode, T=32, batch=1,
                dim=16, heads=2, depth=None, dtype="fp32", device="cpu", causal=mode == "decode")
    result = measure_cell(cell, {"threads": 1, "time_budget_s": 0.05, "probe": CONTENTION_PROBE})
    assert result["status"] == "ok", result.get("reason")
    if len(allowed) >= 2:
        assert len(result["cpus"]) == 1 and result["cpus"][0] in allowed
    else:
        assert result["cpus"] is None
    assert isinstance(result["contended"], bool) and isinstance(result["contended_samples"], int)
    assert result["time_block"] >= 1 and "run_wait" in result
    assert frozenset(os.sched_getaffinity(0)) == allowed

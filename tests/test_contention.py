"""Contention accounting (profiler/contention.py): the rule, the per-sample probe on scripted
counters, a real CPU burner seen by the real /proc reader, pre-flight, auto threads, no /proc.

Nothing here assumes a quiet machine: scripted counters decide the exact cases, and the real
burner test checks an invariant that holds under any load (others' CPU >= the burner's own).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from profiler import contention as C


class FakeReader:
    """Scripted counters: ``advance(dt, others=, own=, steal=, wait=)`` moves time with that
    much CPU use (cores) by other processes and by this one, and run-queue wait (threads)."""

    tick = 100.0

    def __init__(self, procs=None):
        self.t, self.busy, self.steal, self.own, self.wait_ns = 100.0, 5000.0, 0.0, 3.0, 0
        self.procs = procs or {}

    def advance(self, dt, others=0.0, own=0.0, steal=0.0, wait=0.0):
        self.t += dt
        self.busy += (others + own) * dt
        self.own += own * dt
        self.steal += steal * dt
        self.wait_ns += int(wait * dt * 1e9)
        for pid, (name, cpu, share) in list(self.procs.items()):
            self.procs[pid] = (name, cpu + share * dt, share)

    def now(self):
        return self.t

    def cpu_times(self, cpus):
        return self.busy, self.steal

    def own_cpu(self):
        return self.own

    def thread_waits(self):
        return {1: self.wait_ns}

    def loadavg(self):
        return (1.7, 1.2, 0.8)

    def governor(self, cpus):
        return "powersave"

    def process_times(self):
        return {pid: (name, cpu) for pid, (name, cpu, _) in self.procs.items()}


def sample(probe, reader, dt, **load):
    probe.begin()
    reader.advance(dt, **load)
    return probe.end()


# --------------------------------------------------------------------------- the rule
def test_judge_quiet_machine_is_not_contended():
    assert C.judge(0.05, 0.01, threads=2, cores=2, window_s=0.5) == (False, None)
    assert C.judge(None, None, threads=2, cores=2) == (False, None)


def test_judge_others_count_only_beyond_the_free_cores():
    assert C.judge(1.0, None, threads=2, cores=2, window_s=0.5)[0]
    assert not C.judge(1.0, None, threads=1, cores=2, window_s=0.5)[0]  # one core is free for them
    contended, why = C.judge(1.5, None, threads=1, cores=2, window_s=0.5)
    assert contended and "1.50 cores" in why


def test_judge_subtracts_tick_slack_of_short_windows():
    # 0.5 cores of others in a 30 ms window is within 2 ticks of nothing; over 0.5 s it is not
    assert not C.judge(0.5, None, threads=2, cores=2, window_s=0.03)[0]
    assert C.judge(0.5, None, threads=2, cores=2, window_s=0.5)[0]


def test_judge_run_queue_wait():
    contended, why = C.judge(0.0, 0.2, threads=1, cores=2)
    assert contended and "waited for a CPU 20%" in why
    assert not C.judge(0.0, 0.04, threads=1, cores=2)[0]
    assert not C.judge(0.0, 3.0, threads=4, cores=2)[0]  # oversubscribed by the cell itself: ignored


# --------------------------------------------------------------------------- the probe, scripted
def test_probe_idle_samples_are_clean():
    r = FakeReader()
    probe = C.ContentionProbe(2, reader=r, cores=2, sleep=r.advance)
    results = [sample(probe, r, 0.05, others=0.05, own=2.0) for _ in range(20)]
    assert not any(x["contended"] for x in results)
    assert results[-1]["other_cpu"] == pytest.approx(0.05)  # this process's own 2 cores are not "others"
    s = probe.summary()
    assert s["contended_samples"] == 0 and s["probed_samples"] == 20
    assert s["other_cpu"] == pytest.approx(0.05) and s["run_wait"] == 0.0


def test_probe_sees_others_on_the_cells_cores():
    r = FakeReader()
    probe = C.ContentionProbe(2, reader=r, cores=2)
    got = sample(probe, r, 0.5, others=1.0, own=1.0, steal=0.25)
    assert got["contended"] and got["other_cpu"] == pytest.approx(1.0) and got["steal_cpu"] == pytest.approx(0.25)
    assert "other processes used 1.00 cores" in got["why"]


class SplitReader(FakeReader):
    """Scripted counters with the cores the sweep left free apart: ``advance(..., free=)`` is
    others' use of those (cores); ``cpu_times`` of that set reads them, of the cell's its own."""

    def __init__(self, free_set):
        super().__init__()
        self.free_set, self.free_busy = free_set, 100.0

    def advance(self, dt, free=0.0, **load):
        super().advance(dt, **load)
        self.free_busy += free * dt

    def cpu_times(self, cpus):
        return (self.free_busy, 0.0) if cpus == self.free_set else super().cpu_times(cpus)


def test_probe_reads_neighbours_on_the_free_cores_apart_and_marks_the_cell():
    r = SplitReader(frozenset({1}))
    probe = C.ContentionProbe(1, reader=r, cores=1, free_cpus=frozenset({1}))
    results = [sample(probe, r, 0.05, free=1.0, own=1.0) for _ in range(10)]
    # the cell's own core was free of others: no sample is contended, yet the neighbours are seen
    assert not any(x["contended"] for x in results)
    assert all(x["neighbour_cpu"] == pytest.approx(1.0) and x["other_cpu"] == pytest.approx(0.0, abs=1e-9) for x in results)
    s = probe.summary()
    assert s["neighbours"] and s["neighbour_cpu"] == pytest.approx(1.0) and s["contended_samples"] == 0
    # a neighbour that came and went (a browser tab): below NEIGHBOUR_CPU on average, not marked
    r = SplitReader(frozenset({1}))
    probe = C.ContentionProbe(1, reader=r, cores=1, free_cpus=frozenset({1}))
    for k in range(20):
        sample(probe, r, 0.3, free=1.0 if k % 4 == 0 else 0.1, own=1.0)  # windows of one sample each
    s = probe.summary()
    assert s["neighbour_cpu"] == pytest.approx(0.325) and not s["neighbours"]
    # nothing left free (the cell uses every core): no neighbour figure, no mark
    probe = C.ContentionProbe(1, reader=r, cores=1, free_cpus=frozenset())
    got = sample(probe, r, 0.3, free=1.0, own=1.0)
    assert got["neighbour_cpu"] is None and not probe.summary()["neighbours"]


def test_neighbours_rule_is_one_threshold():
    assert not C.neighbours_busy(None) and not C.neighbours_busy(C.NEIGHBOUR_CPU - 0.01)
    assert C.neighbours_busy(C.NEIGHBOUR_CPU) and C.neighbours_busy(1.0)


def test_probe_judges_short_samples_over_a_window():
    r = FakeReader()
    probe = C.ContentionProbe(2, reader=r, cores=2, wait_budget_s=0.0)
    # 0.3 cores of others: hidden by the tick slack of one 30 ms sample, seen over >= 0.25 s
    results = [sample(probe, r, 0.03, others=0.3, own=2.0) for _ in range(15)]
    assert not results[0]["contended"] and results[0]["window_s"] == pytest.approx(0.03)
    assert results[-1]["contended"]
    assert all(x["window_s"] < C.MIN_WINDOW_S + 0.031 for x in results)  # the window slides, never grows


def test_probe_run_queue_wait_is_per_sample():
    r = FakeReader()
    probe = C.ContentionProbe(1, reader=r, cores=2)
    assert not sample(probe, r, 0.03, own=1.0)["contended"]
    got = sample(probe, r, 0.03, own=0.7, wait=0.3)
    assert got["contended"] and got["run_wait"] == pytest.approx(0.3)


def test_probe_waits_for_a_quiet_window_then_stops_waiting_when_the_load_persists():
    r = FakeReader()
    load = {"others": 2.0}
    probe = C.ContentionProbe(2, reader=r, cores=2, wait_budget_s=2.0,
                              sleep=lambda dt: r.advance(dt, others=load["others"]))
    for _ in range(C.CONTENDED_RUN):
        assert sample(probe, r, 0.1, others=2.0)["contended"]
    load["others"] = 0.0  # the load ends: the next begin() waits one poll and finds quiet
    got = sample(probe, r, 0.1, own=2.0)
    assert got["quiet_wait_s"] == pytest.approx(C.QUIET_POLL_S) and not got["contended"]

    r2 = FakeReader()
    probe = C.ContentionProbe(2, reader=r2, cores=2, wait_budget_s=1.0, sleep=lambda dt: r2.advance(dt, others=2.0))
    waits = [sample(probe, r2, 0.1, others=2.0)["quiet_wait_s"] for _ in range(4 * C.CONTENDED_RUN)]
    assert 0 < sum(waits) <= 1.0 and sum(w > 0 for w in waits) == 1  # one bounded wait, then none
    assert probe.summary()["quiet_wait_s"] == pytest.approx(sum(waits))


def test_probe_is_a_zero_argument_factory_for_the_cell_process():
    import importlib

    import torch

    module, _, name = "profiler.contention:ContentionProbe".partition(":")  # how the sweep names it
    probe = getattr(importlib.import_module(module), name)()
    assert probe.threads == torch.get_num_threads()
    probe.begin()
    assert set(probe.end()) >= {"contended", "other_cpu"}


def test_current_threads_without_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert C.current_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert C.current_threads() == C.usable_cores()[0]


def test_probe_misuse_is_one_clear_error():
    with pytest.raises(ValueError, match="threads: expected a positive integer, got 0"):
        C.ContentionProbe(0)
    with pytest.raises(RuntimeError, match="without begin"):
        C.ContentionProbe(1, reader=FakeReader()).end()


# --------------------------------------------------------------------------- the real /proc
def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
def test_real_burner_child_is_seen_as_contended():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        cores = C.usable_cores()[0]
        probe = C.ContentionProbe(cores)
        cpu0 = _proc_cpu(burner.pid)
        probe.begin()
        time.sleep(1.0)  # the sample: this process idle, the burner spinning
        got = probe.end()
        burner_cpu = (_proc_cpu(burner.pid) - cpu0) / got["window_s"]
    finally:
        burner.kill()
        burner.wait()
    # the burner is one of the other processes, whatever else runs (slack: tick sampling); when it got
    # little CPU, the rest of the machine took it, and the sample is contended all the same
    assert burner_cpu > 0, "the burner did not run"
    assert got["other_cpu"] >= burner_cpu - 0.05 - 0.02 / got["window_s"], (got, burner_cpu)
    assert got["contended"] and got["other_cpu"] > C.OTHER_LIMIT, got


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_real_burner_on_the_free_core_is_a_neighbour_not_contention():
    """This process on one CPU, a burner held to another: the probe sees the burner on the free
    CPU, and not on the cell's (whatever else runs, the burner's own share is a lower bound)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs 2 usable CPUs")
    mine, theirs = allowed[0], allowed[1]
    burner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{theirs}}})\nwhile True: pass"])
    os.sched_setaffinity(0, {mine})
    try:
        time.sleep(0.3)
        probe = C.ContentionProbe(1, free_cpus=frozenset({theirs}))
        cpu0 = _proc_cpu(burner.pid)
        probe.begin()
        time.sleep(1.0)
        got = probe.end()
        burner_cpu = (_proc_cpu(burner.pid) - cpu0) / got["window_s"]
    finally:
        os.sched_setaffinity(0, set(allowed))
        burner.kill()
        burner.wait()
    assert burner_cpu > 0.5, "the burner did not run"
    assert got["neighbour_cpu"] >= burner_cpu - 0.05 - 0.02 / got["window_s"], (got, burner_cpu)
    assert probe.summary()["neighbours"]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_real_reader_counters():
    r = C.ProcReader()
    busy, steal = r.cpu_times(None)
    assert busy > 0 and steal >= 0
    waits = r.thread_waits()
    assert waits is None or os.getpid() in waits  # schedstat may be compiled out


# --------------------------------------------------------------------------- no /proc (macOS)
def test_no_proc_reports_none_and_never_contended(tmp_path):
    r = C.ProcReader(proc=str(tmp_path / "nothing"), sys_root=str(tmp_path / "nothing"))
    assert r.cpu_times(None) is None and r.thread_waits() is None and r.process_times() == {}
    probe = C.ContentionProbe(2, reader=r)
    probe.begin()
    got = probe.end()
    assert got["contended"] is False and got["other_cpu"] is None and got["run_wait"] is None
    assert probe.summary()["other_cpu"] is None
    info = C.preflight(2, window_s=0.01, reader=r)
    assert info["busy"] is False and info["message"] is None and info["other_cpu"] is None
    assert C.auto_threads("auto", reader=r, cores=4) == 4
    assert C.wait_for_quiet(2, 5.0, reader=r, cores=2)["quiet"]


# --------------------------------------------------------------------------- threads
def test_auto_threads_leaves_busy_cores():
    assert C.auto_threads("auto", other_cpu=1.0, cores=2) == 1
    assert C.auto_threads("auto", other_cpu=0.1, cores=2) == 2
    assert C.auto_threads("auto", other_cpu=0.5, cores=4) == 3
    assert C.auto_threads("auto", other_cpu=7.0, cores=2) == 1  # at least one
    assert C.auto_threads(3, other_cpu=2.0, cores=2) == 3  # an explicit count is the user's choice


@pytest.mark.parametrize("bad", [0, -1, "x", True, 1.5, None])
def test_auto_threads_bad_input(bad):
    with pytest.raises(ValueError, match="threads: expected a positive integer or 'auto', got"):
        C.auto_threads(bad)


# --------------------------------------------------------------------------- pre-flight
def test_preflight_busy_machine_gives_one_line_with_the_remedy():
    r = FakeReader(procs={4242: ("burner", 10.0, 1.0)})
    info = C.preflight(None, window_s=0.5, reader=r, sleep=lambda dt: r.advance(dt, others=1.0))
    if info["cores"] < 2:
        pytest.skip("needs 2 usable cores")
    assert info["busy"] and info["other_cpu"] == pytest.approx(1.0) and info["auto_threads"] == info["cores"] - 1
    assert info["top"] == [{"pid": 4242, "name": "burner", "cpu": 1.0}]
    line = info["message"]
    assert "\n" not in line and line.startswith("warning: machine busy: other processes use 1.00 of")
    for part in ("load average 1.7 1.2 0.8", "governor powersave", "burner 1.00", "Remedy:", "--threads auto"):
        assert part in line
    stream = io.StringIO()
    assert C.warn_if_busy(info, stream) and stream.getvalue() == line + "\n"


def test_preflight_with_threads_auto_warns_only_when_auto_cannot_help():
    r = FakeReader()
    info = C.preflight("auto", window_s=0.5, reader=r, sleep=lambda dt: r.advance(dt, others=1.0))
    if info["cores"] < 2:
        pytest.skip("needs 2 usable cores")
    assert info["threads"] == info["auto_threads"] == info["cores"] - 1 and info["threads_requested"] == "auto"
    assert not info["busy"] and info["message"] is None
    # the sweep's threads have cores of their own, but the load shares the machine with them: a note
    assert info["neighbours"] and info["note"].startswith("note: other processes use 1.00 of")
    assert "marked as timed beside busy neighbours" in info["note"] and "\n" not in info["note"]
    stream = io.StringIO()
    assert C.warn_if_busy(info, stream) and stream.getvalue() == info["note"] + "\n"
    with pytest.raises(ValueError, match="threads: expected a positive integer, 'auto' or None, got 0"):
        C.preflight(0, reader=r)


def test_preflight_quiet_machine_says_nothing():
    r = FakeReader()
    info = C.preflight(1, window_s=0.5, reader=r, sleep=lambda dt: r.advance(dt, others=0.05))
    assert not info["busy"] and info["message"] is None and info["busy_cores"] == 0
    assert not info["neighbours"] and info["note"] is None
    stream = io.StringIO()
    assert not C.warn_if_busy(info, stream) and stream.getvalue() == ""


def test_preflight_line_without_a_better_thread_count():
    info = {"busy": True, "other_cpu": 1.0, "cores": 1, "threads": 1, "auto_threads": 1, "loadavg": None,
            "steal_cpu": 0.4, "governor": None, "top": []}
    line = C.preflight_line(info)
    assert "steal 0.40 cores" in line and "--threads auto" not in line and "Remedy: stop them" in line

"""Rounds (profiler/rounds.py): each cell timed in k processes, the rounds a whole sweep apart and
the cells of one length together, the fastest clean round kept, one record per cell even when
interrupted."""

import json

import pytest

from profiler import sweep as sweep_mod
from profiler.rounds import length_groups, merge_rounds, round_order
from profiler.settings import SweepSettings, plan_profile
from zoo.errors import ZooValueError


def _ok(samples, **extra):
    return {"status": "ok", "reason": None, "time_samples": list(samples), "mem_peak_bytes": 100, **extra}


def test_merge_keeps_the_fastest_clean_round_and_every_median():
    first = _ok([3.0, 3.1, 2.9], contended=False, prefill_s=7.0)
    merged = merge_rounds(first, [_ok([1.0, 1.0, 1.1], contended=True), _ok([2.0, 2.1, 1.9], contended=False)], 3)
    assert merged["time_rounds_s"] == pytest.approx([3.0, 1.0, 2.0])
    assert merged["time_round"] == 3 and merged["time_median_s"] == pytest.approx(2.0)  # round 2 was contended
    assert merged["contended"] is False and merged["prefill_s"] == 7.0 and merged["mem_peak_bytes"] == 100
    assert merged["round_spread"] == pytest.approx(2.0)  # 3.0 / 1.0 - 1
    assert merged["time_samples"] == [2.0, 2.1, 1.9] and merged["rounds"] == 3


def test_merge_keeps_a_faster_noisy_round_over_a_slower_steady_one():
    noisy = [1.0, 1.5, 2.0, 1.0, 1.6]  # IQR / median > 10%
    merged = merge_rounds(_ok([2.0, 2.0, 2.05]), [_ok(noisy)], 2)
    assert merged["time_round"] == 2 and merged["noisy"] is True and merged["time_median_s"] == 1.5


def test_merge_all_contended_takes_the_fastest_and_stays_contended():
    merged = merge_rounds(_ok([3.0], contended=True), [_ok([2.0], contended=True)], 2)
    assert merged["time_median_s"] == 2.0 and merged["contended"] is True and merged["time_round"] == 2


def test_merge_names_a_failed_round_and_keeps_the_others():
    merged = merge_rounds(_ok([3.0, 3.0]), [{"status": "timeout", "reason": "timed out"}], 2)
    assert merged["time_rounds_s"] == [3.0, None] and merged["time_median_s"] == 3.0
    assert merged["round_errors"] == ["round 2: timeout: timed out"]


def _cells():
    cells, _ = plan_profile(mixers="softmax,fnet", lengths="8,16", modes="forward", dim=16, heads=2,
                            device="cpu", out="unused.jsonl", contention=False)
    return cells


def test_groups_follow_lengths_and_even_rounds_reverse():
    groups = length_groups(_cells())
    assert [[c.T for c in g] for g in groups] == [[8, 8], [16, 16]]
    assert [c.label for c in round_order(groups[0], 2)] == ["fnet", "softmax"]
    assert [c.label for c in round_order(groups[0], 3)] == ["softmax", "fnet"]


class _FakeExecutor:
    name, fans_out = "fake", False

    def __init__(self, interrupt_at=None, terminate_at=None):
        self.calls, self.interrupt_at, self.terminate_at = [], interrupt_at, terminate_at

    def run(self, cell, opts, timeout):
        self.calls.append((cell.label, cell.T, bool(opts.get("timing_only"))))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.terminate_at is not None and len(self.calls) == self.terminate_at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or `kill` stops a sweep
        base = 1.0 if cell.label == "softmax" else 2.0
        r = sum(1 for c in self.calls if c[:2] == (cell.label, cell.T))
        return _ok([base * (4 - r)] * 3, contended=False)  # each later round faster

    def close(self):
        pass


def _sweep(tmp_path, monkeypatch, fake, rounds=3):
    monkeypatch.setattr(sweep_mod, "make_executor", lambda *a, **k: fake)
    out = tmp_path / "r.jsonl"
    s = SweepSettings(out=str(out), rounds=rounds, progress=False, threads=1)
    return out, s


def test_sweep_interleaves_rounds_and_writes_one_record_per_cell(tmp_path, monkeypatch):
    fake = _FakeExecutor()
    out, s = _sweep(tmp_path, monkeypatch, fake)
    sweep_mod.run_sweep(_cells(), s)
    assert fake.calls == [("softmax", 8, False), ("fnet", 8, False), ("softmax", 16, False), ("fnet", 16, False),
                          ("fnet", 8, True), ("softmax", 8, True), ("fnet", 16, True), ("softmax", 16, True),
                          ("softmax", 8, True), ("fnet", 8, True), ("softmax", 16, True), ("fnet", 16, True)]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    cells = [r for r in recs if r["kind"] == "cell"]
    assert len(cells) == 4 and len({r["key"] for r in cells}) == 4
    soft = next(r for r in cells if r["label"] == "softmax" and r["T"] == 8)
    assert soft["time_rounds_s"] == [3.0, 2.0, 1.0] and soft["time_median_s"] == 1.0 and soft["rounds"] == 3
    assert recs[0]["settings"]["rounds"] == 3


def test_interrupted_round_still_writes_the_measured_cells(tmp_path, monkeypatch):
    fake = _FakeExecutor(interrupt_at=6)  # during round 2 of T = 8
    out, s = _sweep(tmp_path, monkeypatch, fake)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(_cells(), s)
    cells = [json.loads(line) for line in out.read_text().splitlines() if '"kind":"cell"' in line.replace(" ", "")]
    assert sorted((r["label"], r["T"]) for r in cells) == [("fnet", 8), ("fnet", 16), ("softmax", 8), ("softmax", 16)]
    fnet = next(r for r in cells if r["label"] == "fnet" and r["T"] == 8)
    assert fnet["time_rounds_s"] == [6.0, 4.0] and fnet["time_median_s"] == 4.0


def test_a_terminated_sweep_still_writes_the_measured_cells(tmp_path, monkeypatch):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    fake = _FakeExecutor(terminate_at=6)  # SIGTERM during round 2 of T = 8
    out, s = _sweep(tmp_path, monkeypatch, fake)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(_cells(), s)
    cells = [json.loads(line) for line in out.read_text().splitlines() if '"kind":"cell"' in line.replace(" ", "")]
    assert len(cells) == 4  # round 1 of every cell, not lost with the process
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the sweep's only while it runs


def test_rounds_bad_values_are_refused():
    with pytest.raises(ZooValueError, match="rounds: expected a positive integer"):
        SweepSettings(out="x.jsonl", rounds=0)
    with pytest.raises(ZooValueError, match="rounds: expected 1 with --executor ray"):
        SweepSettings(out="x.jsonl", rounds=2, executor="ray")


def test_a_real_two_round_sweep_in_process(tmp_path):
    from profiler import run_profile

    out = run_profile(mixers="softmax", lengths="16", modes="forward,decode", dim=16, heads=2, device="cpu",
                      out=str(tmp_path / "real.jsonl"), isolate=False, time_budget=0.02, rounds=2, progress=False)
    cells = [json.loads(line) for line in open(out) if '"cell"' in line]
    assert {r["mode"] for r in cells} == {"forward", "decode"}
    for r in cells:
        assert r["status"] == "ok" and r["rounds"] == 2 and len(r["time_rounds_s"]) == 2
        # the chosen round's median (which round is chosen depends on contention: the merge tests above)
        assert r["time_median_s"] == pytest.approx(r["time_rounds_s"][r["time_round"] - 1])
    fwd = next(r for r in cells if r["mode"] == "forward")
    # round 1's measurement is kept: the method and the tensor peak (resident growth of a 5 KiB step can
    # be 0 in a process whose heap already holds free pages, so it is only required to be there)
    assert fwd["mem_method"] and fwd["mem_peak_bytes"] is not None
    assert fwd["mem_tensor_peak_bytes"] > 0 and fwd["flops_counted"] > 0
    dec = next(r for r in cells if r["mode"] == "decode")
    assert dec["prefill_s"] is not None


def test_round_one_feeds_the_memory_fallback_of_longer_lengths(tmp_path, monkeypatch):
    """A mixer the fake pass cannot follow is predicted from its shorter cells: with rounds, round 1's
    results must feed that prediction before the records are written at the end."""
    seen = {}

    class _Mem(_FakeExecutor):
        def run(self, cell, opts, timeout):
            if not opts.get("timing_only"):
                seen[cell.T] = opts.get("fallback_predicted_abs")
            out = super().run(cell, opts, timeout)
            return {**out, "mem_peak_bytes": 10 * cell.T, "mem_abs_peak_bytes": 1000 + 10 * cell.T}

    cells, _ = plan_profile(mixers="fnet", lengths="8,16,32", modes="forward", dim=16, heads=2,
                            device="cpu", out="unused.jsonl", contention=False)
    out, s = _sweep(tmp_path, monkeypatch, _Mem())
    sweep_mod.run_sweep(cells, s)
    assert seen[8] is None and seen[16] is None and seen[32] == 1000 + 10 * 32


_KILLED_IN_ROUND_2 = """
import os, signal, sys
from profiler import run_profile, sweep

made = sweep.make_executor

def make_killing(*args, **kwargs):  # SIGKILL at round 2's first call: nothing unwinds, no finally runs
    executor = made(*args, **kwargs)
    run = executor.run

    def killing(cell, opts, timeout):
        if opts.get("timing_only"):
            os.kill(os.getpid(), signal.SIGKILL)
        return run(cell, opts, timeout)

    executor.run = killing
    return executor

sweep.make_executor = make_killing
run_profile(mixers="softmax,fnet", lengths="16,32", modes="forward", dim=16, heads=2, device="cpu",
            out=sys.argv[1], isolate=False, time_budget=0.02, rounds=2, progress=False)
"""


def test_a_killed_sweep_keeps_round_1_as_held_records_and_the_report_says_so(tmp_path):
    """SIGKILL cannot be caught: the cells held for round 2 were lost with the process until each was
    journalled when round 1 ended for it. The report names what is missing; --resume measures it."""
    import subprocess
    import sys

    from profiler import run_profile
    from reports.load import ReportError, read_profile
    from reports.render import build_report

    out = tmp_path / "killed.jsonl"
    proc = subprocess.run([sys.executable, "-c", _KILLED_IN_ROUND_2, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["header"] + ["held"] * 4  # round 1 of all four cells, no cell record
    held = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert all(r["status"] == "ok" and r["mem_tensor_peak_bytes"] > 0 and r["flops_counted"] > 0 for r in held)
    assert len(read_profile(out).cut) == 4
    with pytest.raises(ReportError, match=r"killed before writing 4 cell\(s\).*--resume"):
        build_report([out], tmp_path / "report")

    run_profile(mixers="softmax,fnet", lengths="16,32", modes="forward", dim=16, heads=2, device="cpu",
                out=str(out), isolate=False, time_budget=0.02, rounds=2, progress=False, resume=True)
    profile = read_profile(out)
    assert profile.cut == [] and len(profile.cells) == 4 and set(profile.cells["rounds"]) == {2}
    report = build_report([out], tmp_path / "report")
    assert not any("killed before" in w for w in report.warnings)

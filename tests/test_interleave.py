"""Interleaved timing (profiler/interleave.py): the sweep's cells timed again in turn in one process,
a sample of each in turn, so that a drifting host moves them alike; a cell the pass cannot time
keeps its own timing, said so."""

import json
from pathlib import Path

import pytest
import torch

from profiler.builders import Step, build_step
from profiler.interleave import MIN_SAMPLES, _Entry, _rotate, _used, can_interleave, measure_group, merge_interleaved, pack_groups
from profiler.settings import SweepSettings, plan_profile
from profiler.timing import Sampler
from zoo.errors import ZooValueError

HERE = Path(__file__).resolve()
CALLS: list[str] = []


def _cells(mixers="softmax,fnet", lengths="8,16", modes="forward"):
    cells, _ = plan_profile(mixers=mixers, lengths=lengths, modes=modes, dim=16, heads=2, device="cpu",
                            out="unused.jsonl", contention=False)
    return cells


def build_fnet_fails(cell, device, dtype):
    """A builder for the group test: fnet's step cannot be built, the others are the registry's."""
    if cell.label == "fnet":
        raise RuntimeError("fnet could not be built here")
    return build_step(cell, device, dtype)


def test_groups_pack_consecutive_cells_under_the_cap():
    cells = _cells(lengths="8,16,32")  # 6 cells, plan order
    peaks = {c.key: 100 for c in cells}
    assert [len(g) for g in pack_groups(cells, peaks, None, 3.0)] == [6]
    assert [len(g) for g in pack_groups(cells, peaks, 650, 3.0)] == [2, 2, 2]  # 3 x 100 x 2 = 600 <= 650
    peaks[cells[2].key] = 10_000  # larger than the cap alone: a group of its own
    groups = pack_groups(cells, peaks, 650, 3.0)
    assert [len(g) for g in groups] == [2, 1, 2, 1] and groups[1] == [cells[2]]
    assert [c for g in groups for c in g] == cells  # every cell once, in plan order


def test_only_measured_eager_cells_are_timed_in_turn():
    import dataclasses

    forward, decode = _cells(modes="forward")[0], _cells(mixers="softmax", modes="decode")[0]
    assert can_interleave(forward, {"status": "ok"}) and can_interleave(decode, {"status": "ok"})
    assert not can_interleave(forward, {"status": "oom", "inferred": True})
    assert not can_interleave(forward, {"status": "ok", "inferred": True})
    assert not can_interleave(dataclasses.replace(forward, compile="inductor"), {"status": "ok"})


def test_the_rotation_takes_one_sample_of_each_cell_in_turn():
    import time

    from profiler.timing import timer

    CALLS.clear()

    def entry(name, seconds):
        step = Step(fn=lambda: (CALLS.append(name), time.sleep(seconds)))
        return _Entry(None, step, Sampler(timer(torch.device("cpu")), None))

    a, b = entry("a", 0.002), entry("b", 0.05)
    _rotate([a, b], budget=0.08, deadline=None)
    # b's samples are 50 ms: its budget is spent after 2, but the pass takes at least MIN_SAMPLES;
    # a goes on until its own rule says enough, and b samples on beside it (a companion: the drift
    # at a's samples is read from b's), so the two alternate to the end; those readings are not b's samples
    assert CALLS == ["a", "b"] * (len(CALLS) // 2) and len(CALLS) % 2 == 0
    own = [m for m in b.marks if m[3]]
    assert len(b.marks) == CALLS.count("b") > len(own) == len(b.sampler.clean) >= MIN_SAMPLES
    assert all(m[3] for m in a.marks) and len(a.sampler.clean) == len(a.marks) > MIN_SAMPLES
    assert _used(b) == [k for k, m in enumerate(b.marks) if m[3]]  # only its own samples count for b


def test_the_last_cells_rotating_keep_the_cheapest_finished_cells_beside_them():
    from types import SimpleNamespace

    from profiler.interleave import COMPANIONS, _companions

    def entry(name, per_sample, samples=5):
        return SimpleNamespace(name=name, marks=[(0.0, per_sample, True)] * samples, spent=per_sample * samples)

    cells = [entry(n, t) for n, t in zip("abcdefg", (0.3, 0.05, 0.2, 0.06, 0.5, 0.07, 0.08))]
    cells.append(entry("h", 0.01, samples=0))  # never sampled (built, then the deadline): not a companion
    names = lambda got: [e.name for e in got]
    assert COMPANIONS == 4
    assert names(_companions(cells, [cells[0]])) == ["b", "d", "f", "g"]  # a alone: the 4 cheapest others
    assert names(_companions(cells, cells[:3])) == ["d", "f"]  # a, b, c: 2 others each already
    assert _companions(cells, cells[:5]) == [] and _companions(cells, cells) == []


def test_a_cell_still_noisy_when_its_budget_is_spent_samples_as_long_again():
    """Scripted durations: two steady cells leave after MIN_SAMPLES; a cell whose samples alternate
    10 / 14 ms (IQR/median ~ 0.33: noisy, and its neighbours cannot explain it) is extended once."""
    import itertools
    import time

    def entry(durations):
        it = itertools.cycle(durations)

        def clock(fn):
            fn()
            return next(it)

        return _Entry(None, Step(fn=lambda: time.sleep(0.01)), Sampler(clock, None))

    steady, other, jitter = entry([0.010]), entry([0.020]), entry([0.010, 0.014])
    _rotate([steady, other, jitter], budget=0.03, deadline=None)
    # the steady cells have enough after MIN_SAMPLES and sample on beside jitter (companions' readings)
    assert len(steady.marks) == len(other.marks) == len(jitter.marks)
    assert len(_used(steady)) == len(_used(other)) == MIN_SAMPLES == len(steady.sampler.clean)
    assert steady.until is None and other.until is None and jitter.until is not None
    assert jitter.spent >= jitter.until and 2 * MIN_SAMPLES - 2 <= len(jitter.marks) <= 3 * MIN_SAMPLES


def test_merge_takes_the_group_timing_and_keeps_the_isolated_median():
    first = {"status": "ok", "time_median_s": 2.0, "time_samples": [2.0, 2.0, 2.1], "mem_peak_bytes": 5, "noisy": False}
    timed = {"status": "ok", "time_median_s": 1.5, "time_samples": [1.5] * 12, "noisy": True,
             "time_method": "interleaved", "interleave_cells": 4}
    merged = merge_interleaved(first, timed)
    assert merged["time_median_s"] == 1.5 and merged["time_isolated_s"] == 2.0 and merged["noisy"] is True
    assert merged["time_method"] == "interleaved" and merged["mem_peak_bytes"] == 5 and merged["status"] == "ok"
    kept = merge_interleaved(first, {"status": "error", "reason": "interleaved timing: boom"})  # a decode cell's
    assert kept["time_median_s"] == 2.0 and kept["time_method"] == "isolated"
    assert kept["interleave_error"] == "interleaved timing: boom"
    # round 1 did not time it (forward, train): the pass's timing, else the cell's own taken after the pass
    untimed = {"status": "ok", "mem_peak_bytes": 5}
    assert merge_interleaved(untimed, timed)["time_median_s"] == 1.5
    assert merge_interleaved(untimed, timed)["time_isolated_s"] is None
    alone = {"status": "ok", "time_samples": [3.0, 3.1, 2.9, 3.0, 3.0], "time_block": 1, "contended": False}
    got = merge_interleaved(untimed, {"status": "error", "reason": "interleaved timing: boom"}, alone)
    assert got["time_median_s"] == got["time_isolated_s"] == 3.0 and got["time_method"] == "isolated"
    assert got["time_n"] == 5 and got["time_block"] == 1 and got["interleave_error"] == "interleaved timing: boom"
    failed = merge_interleaved(untimed, None, {"status": "timeout", "reason": "exceeded 60 s"})
    assert failed["status"] == "ok" and failed.get("time_median_s") is None and failed["mem_peak_bytes"] == 5
    assert failed["interleave_error"].endswith("timed alone: timeout: exceeded 60 s")
    stopped = merge_interleaved(untimed, None)
    assert stopped["interleave_error"].startswith("not timed by the interleaved pass")


def test_a_group_times_every_cell_and_a_failing_build_costs_only_that_cell():
    cells = _cells()  # softmax, fnet at 8 and 16
    out = measure_group(cells, {"threads": 1, "time_budget_s": 0.05, "builder": f"{HERE}:build_fnet_fails",
                                "timeout_s": 60})
    group = out["group"]
    assert out["status"] == "ok" and set(group) == {c.key for c in cells}
    for c in cells:
        r = group[c.key]
        if c.label == "fnet":
            assert r["status"] == "error" and "fnet could not be built here" in r["reason"]
        else:
            assert r["status"] == "ok" and r["time_method"] == "interleaved" and r["interleave_cells"] == 2
            assert r["time_n"] >= MIN_SAMPLES and r["time_median_s"] > 0 and r["threads"] == 1
            assert len(r["time_raw_samples"]) == r["time_n"] and r["time_raw_median_s"] > 0
            at = r["time_sample_at_s"]
            assert len(at) == r["time_n"] and all(t >= 0 for t in at)
            assert 0.5 < r["drift_range"][0] <= r["drift_range"][1] < 2.0
    ranges = [group[c.key]["drift_range"] for c in cells if c.label != "fnet"]
    assert min(lo for lo, _ in ranges) <= 1.0 <= max(hi for _, hi in ranges)  # relative to the pass's typical speed


def test_round_1s_time_per_call_sizes_the_sample_without_sizing_calls():
    from profiler.interleave import PASS_BLOCK_S, PASS_WARMUP_CALLS
    from profiler.timing import block_for

    cells = _cells(mixers="softmax", lengths="8")
    per_call = {cells[0].key: 0.004}  # round 1's median (a decode cell's): a 50 ms sample is 13 calls
    r = measure_group(cells, {"threads": 1, "time_budget_s": 0.05, "timeout_s": 60, "per_call_s": per_call})["group"]
    got = r[cells[0].key]
    assert got["status"] == "ok" and got["time_block"] == block_for(0.004, PASS_BLOCK_S) == 13
    assert got["warmup_calls"] == PASS_WARMUP_CALLS  # the first call and one more
    assert block_for(0.2) == 1 and block_for(1e-9) == 1000  # one call; the cap
    # without round 1's figure the pass sizes the sample itself (size_block, tested on a fake clock in
    # test_measure_core: a sample's length on this clock depends on the host, so it is not asserted here)
    r = measure_group(cells, {"threads": 1, "time_budget_s": 0.05, "timeout_s": 60})["group"][cells[0].key]
    assert r["status"] == "ok" and r["time_block"] > 13 and r["warmup_calls"] == PASS_WARMUP_CALLS


def test_an_interleaved_sweep_writes_each_cell_once_with_both_timings(tmp_path):
    from profiler import run_profile

    out = run_profile(mixers="softmax,fnet", lengths="16,32", modes="forward,decode", dim=16, heads=2, device="cpu",
                      out=str(tmp_path / "il.jsonl"), isolate=False, time_budget=0.02, interleave=True, progress=False)
    lines = [json.loads(line) for line in open(out)]
    header = next(r for r in lines if r.get("kind") == "header")
    assert header["settings"]["interleave"] is True
    cells = [r for r in lines if r.get("kind") == "cell"]
    assert len(cells) == len({r["key"] for r in cells}) == 8
    timed = [r for r in cells if r["status"] == "ok"]  # fnet is not causal: no decode
    assert len(timed) == 6 and {r["status"] for r in cells} == {"ok", "unsupported"}
    for r in timed:  # timed in turn; round 1 timed only the decode cells (their prefill is timed there)
        assert r["time_method"] == "interleaved" and r["interleave_cells"] == 6
        if r["mode"] == "forward":
            assert r["mem_method"] and r["time_isolated_s"] is None and r["cpu_heap"]["timing"] is None
        else:  # decode: per-token time from the pass, prefill and state from round 1
            assert r["prefill_s"] > 0 and r["state_bytes"] > 0 and r["time_isolated_s"] > 0
    assert sorted(r["interleave_position"] for r in timed) == list(range(6))


BUILDS: dict[str, int] = {}


def build_fails_in_the_pass(cell, device, dtype):
    """fnet's third build fails: round 1 builds it twice (fake pass, real step), the pass third,
    the timing alone after the pass fourth (inline executor: one process, one counter)."""
    BUILDS[cell.key] = BUILDS.get(cell.key, 0) + 1
    if cell.label == "fnet" and BUILDS[cell.key] == 3:
        raise RuntimeError("fnet could not be built in the pass")
    return build_step(cell, device, dtype)


def test_a_cell_the_pass_cannot_time_is_timed_alone_after_it(tmp_path):
    from profiler import run_profile

    from profiler.builders import load_ref

    builds = load_ref(f"{HERE}:BUILDS")  # the builder's module is this file imported once more
    builds.clear()
    out = run_profile(mixers="softmax,fnet", lengths="16", modes="forward", dim=16, heads=2, device="cpu",
                      out=str(tmp_path / "il.jsonl"), isolate=False, time_budget=0.02, interleave=True, progress=False,
                      builder=f"{HERE}:build_fails_in_the_pass")
    cells = {r["label"]: r for r in map(json.loads, open(out)) if r.get("kind") == "cell"}
    fnet, softmax = cells["fnet"], cells["softmax"]
    assert sorted(builds.values()) == [3, 4]  # softmax: no fourth build
    assert fnet["status"] == "ok" and fnet["time_method"] == "isolated" and fnet["time_median_s"] > 0
    assert fnet["time_isolated_s"] == fnet["time_median_s"] and "could not be built in the pass" in fnet["interleave_error"]
    assert softmax["time_method"] == "interleaved" and softmax["time_isolated_s"] is None


def test_interleave_refuses_rounds_and_remote_executors():
    with pytest.raises(ZooValueError, match="rounds: expected 1 with --interleave"):
        SweepSettings(out="x.jsonl", rounds=2, interleave=True)
    with pytest.raises(ZooValueError, match="interleave: expected --executor fork, spawn or inline"):
        SweepSettings(out="x.jsonl", interleave=True, executor="ray")


def test_the_cli_passes_interleave_and_names_the_conflict(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["profile", "--mixers", "softmax", "--lengths", "16", "--dim", "16", "--heads", "2",
                                   "--interleave", "--rounds", "2", "--out", str(tmp_path / "x.jsonl"), "--quiet"])
    assert res.exit_code != 0 and "rounds: expected 1 with --interleave" in res.output
    assert not (tmp_path / "x.jsonl").exists()  # refused before anything is written

"""The load probe wired into a CPU sweep: pre-flight in the header, per-cell contention fields,
``--threads auto`` resolved and recorded, and the switch that turns it off. Nothing here assumes
the machine is quiet: only that the fields exist, agree with each other and are well typed."""

from __future__ import annotations

import json

import pytest

from profiler import run_profile
from profiler.settings import CONTENTION_PROBE, SweepSettings, plan_profile
from zoo.errors import ZooValueError

TINY = dict(mixers="softmax", lengths="32,64", modes="forward", dim=16, heads=2, device="cpu", time_budget=0.05,
            isolate=False, progress=False)


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_cpu_sweep_records_preflight_and_probe_fields(tmp_path):
    path = run_profile(out=tmp_path / "p.jsonl", threads="auto", **TINY)
    header, *rest = _records(path)
    pre = header["contention"]
    assert pre["threads_requested"] == "auto" and pre["threads"] == pre["auto_threads"] >= 1
    assert header["settings"]["threads"] == pre["auto_threads"]
    cells = [r for r in rest if r["kind"] == "cell"]
    assert len(cells) == 2
    for c in cells:
        assert c["status"] == "ok" and c["threads"] == pre["auto_threads"]
        assert isinstance(c["contended"], bool) and isinstance(c["contended_samples"], int)
        assert c["other_cpu"] is None or c["other_cpu"] >= 0.0
        assert "run_wait" in c and "quiet_wait_s" in c


def test_no_contention_switch_and_gpu_leave_the_probe_off(tmp_path):
    _, on = plan_profile(out=tmp_path / "a.jsonl", **{k: v for k, v in TINY.items() if k not in ("isolate", "progress")})
    assert on.probe == CONTENTION_PROBE
    _, off = plan_profile(out=tmp_path / "b.jsonl", contention=False,
                          **{k: v for k, v in TINY.items() if k not in ("isolate", "progress")})
    assert off.probe is None
    path = run_profile(out=tmp_path / "c.jsonl", contention=False, **TINY)
    header, *rest = _records(path)
    assert "contention" not in header
    assert all(r.get("contended") is None for r in rest if r["kind"] == "cell")


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_threads_must_be_positive_or_auto(tmp_path, bad):
    with pytest.raises(ZooValueError, match="threads: expected a positive integer or 'auto'"):
        SweepSettings(out=str(tmp_path / "x.jsonl"), threads=bad)

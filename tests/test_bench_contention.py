"""benchmarks/bench_contention.py and contention_stats.py: the statistics on synthetic runs, the
orchestration with a stand-in for zoo profile, the load generator (start, stop, no orphans) and
bad input. Nothing here times anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import bench_contention as bench
from benchmarks import contention_stats as S

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {"softmax": 2.0, "ponet": 1.0, "fnet": 1.1, "transnormer": 1.0}
SCALE = {"softmax": 1e-9, "ponet": 4e-6, "fnet": 2e-6, "transnormer": 6e-6}


def run(perturb=None, flags=None, threads=1, lengths=(512, 1024, 2048, 4096)):
    """Synthetic cells: time = scale * T^k, times ``perturb[(label, mode, T)]``; ``flags`` marks
    cells noisy/contended."""
    cells = []
    for label, k in CLASSES.items():
        for mode in ("forward", "train"):
            for T in lengths:
                key = (label, mode, T)
                t = SCALE[label] * T**k * (3 if mode == "train" else 1) * (perturb or {}).get(key, 1.0)
                cell = {"kind": "cell", "key": f"{label}-{mode}-{T}", "label": label, "mode": mode, "T": T,
                        "status": "ok", "time_median_s": t, "threads": threads, "noisy": False, "time_n": 10}
                cell.update((flags or {}).get(key, {}))
                cells.append(cell)
    return cells


def test_kendall_tau():
    assert S.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert S.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert S.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 2 / 6)
    assert S.kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / 3**0.5 / 2**0.5)  # tau-b with a tie
    with pytest.raises(ValueError, match="kendall_tau: expected lists of one length"):
        S.kendall_tau([1, 2], [1])


def test_identical_runs_meet_every_target():
    out = S.evaluate(run(), run(), "softmax")
    assert out["passed"], out["targets"]
    assert out["ratios"]["share_within"] == 1.0 and out["ratios"]["n"] == 3 * 2 * 4
    assert out["exponents"]["max_exponent_diff"] == pytest.approx(0.0, abs=1e-3)
    assert out["rankings"]["kendall_tau_mean"] == 1.0


def test_unflagged_outlier_is_counted_and_flagged_one_is_not():
    slow = {("ponet", "forward", 1024): 1.5, ("fnet", "train", 2048): 1.5}
    loaded = run(perturb=slow, flags={("ponet", "forward", 1024): {"contended": True}})
    out = S.compare_ratios(loaded, run(), "softmax")
    assert out["within"] == out["n"] - 2
    assert out["unflagged_outliers"] == 1 and out["outlier_cells"] == [("fnet", "train", 2048)]


def test_a_flagged_baseline_flags_every_ratio_it_makes():
    loaded = run(perturb={("softmax", "forward", 512): 2.0}, flags={("softmax", "forward", 512): {"noisy": True}})
    out = S.compare_ratios(loaded, run(), "softmax")
    assert out["unflagged_outliers"] == 0 and out["within"] == out["n"] - 3


def test_exponents_fit_the_same_clean_lengths_in_both_runs():
    # a contended 4k cell 3x slow would bend the fit; it is left out of BOTH runs' fits
    key = ("ponet", "train", 4096)
    out = S.compare_exponents(run(perturb={key: 3.0}, flags={key: {"contended": True}}), run())
    row = next(r for r in out["rows"] if r["series"] == ("ponet", "train"))
    assert row["lengths"] == [512, 1024, 2048] and row["diff"] == pytest.approx(0.0, abs=1e-3)
    assert out["max_exponent_diff"] == pytest.approx(0.0, abs=1e-3)
    # unflagged, the same cell moves the exponent and the target fails
    out = S.evaluate(run(perturb={key: 3.0}), run(), "softmax")
    assert out["exponents"]["max_exponent_diff"] > 0.3 and not out["targets"]["max_exponent_diff"][2]


def test_too_few_clean_lengths_fit_every_length_as_the_report_does():
    # 2 clean lengths of 4: the report fits all four (with a ~, no verdict); so does the comparison,
    # on the same lengths in both runs, and a slowed unclean cell there counts against the target
    key = ("fnet", "forward", 4096)
    flags = {("fnet", "forward", T): {"noisy": True} for T in (512, 1024)}
    out = S.compare_exponents(run(flags=flags, perturb={key: 3.0}), run())
    row = next(r for r in out["rows"] if r["series"] == ("fnet", "forward"))
    assert row["lengths"] == [512, 1024, 2048, 4096] and not row["clean"] and row["diff"] > 0.3
    assert all(r["clean"] for r in out["rows"] if r["series"] != ("fnet", "forward"))
    # fewer than 3 lengths in both runs at all: not fitted
    out = S.compare_exponents(run(lengths=(512, 1024)), run(lengths=(512, 1024)))
    assert not out["rows"] and ("fnet", "forward") in out["skipped"]


def test_cells_beside_busy_neighbours_are_flagged_and_still_compared():
    # every loaded cell timed beside a busy process on the free core: every ratio is flagged (the reader
    # sees ≈), so none is an unflagged outlier; the share within 15% and the exponents still count
    every = {(label, mode, T): {"neighbours": True, "neighbour_cpu": 1.0}
             for label in CLASSES for mode in ("forward", "train") for T in (512, 1024, 2048, 4096)}
    slow = {("fnet", "forward", 2048): 1.3, ("fnet", "forward", 4096): 1.3}
    out = S.evaluate(run(flags=every, perturb=slow), run(), "softmax")
    assert out["ratios"]["unflagged_outliers"] == 0 and out["ratios"]["within"] == out["ratios"]["n"] - 2
    assert out["exponents"]["rows"] and not any(r["clean"] for r in out["exponents"]["rows"])
    assert out["quiet_flags"]["share"] == 0.0 and S.flagged_share(run(flags=every))["neighbours"] == 32
    assert S.contention_summary(run(flags=every))["neighbour_cells"] == 32


def test_ranking_swap_lowers_tau():
    # fnet 4x slower at 512 forward: it passes ponet and transnormer there
    out = S.compare_rankings(run(perturb={("fnet", "forward", 512): 4.0}), run())
    row = next(r for r in out["rows"] if r["group"] == ("forward", 512))
    assert row["tau"] < 1.0 and out["kendall_tau_min"] == row["tau"]
    assert out["kendall_tau_mean"] > out["kendall_tau_min"]


def test_quiet_flagged_share_and_its_target():
    flags = {("ponet", "forward", T): {"noisy": True} for T in (512, 1024, 2048, 4096)}
    share = S.flagged_share(run(flags=flags))
    assert share["flagged"] == 4 and share["n"] == 32 and share["share"] == pytest.approx(4 / 32)
    assert not S.evaluate(run(), run(flags=flags), "softmax")["targets"]["quiet_flagged_share"][2]


def test_thread_count_must_be_one():
    cells = run()
    assert S.thread_count(cells) == 1
    cells[0]["threads"] = 2
    with pytest.raises(ValueError, match="threads: expected one thread count"):
        S.thread_count(cells)


def test_load_cells_keeps_the_last_record_per_key(tmp_path):
    path = tmp_path / "run.jsonl"
    cells = run()
    first = dict(cells[0], time_median_s=99.0)
    path.write_text("\n".join(json.dumps(r) for r in [{"kind": "header"}, first, *cells]) + "\n")
    got = S.load_cells(path)
    assert len(got) == len(cells) and all(c["time_median_s"] != 99.0 for c in got)


def test_contention_summary_before_and_after_the_probe_is_wired():
    assert S.contention_summary(run())["probed"] is False
    cells = run(flags={("ponet", "forward", 512): {"contended": True, "contended_samples": 7, "other_cpu": 1.0}})
    got = S.contention_summary(cells)
    assert got["probed"] and got["contended_cells"] == 1 and got["contended_samples"] == 7
    assert got["other_cpu_mean"] == 1.0


# --------------------------------------------------------------------------- orchestration
class FakeLoad:
    running = False

    def __init__(self, kind, procs):
        self.kind, self.procs = kind, procs

    def __enter__(self):
        FakeLoad.running = True
        return self

    def __exit__(self, *exc):
        FakeLoad.running = False


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    """No real load, no settling, two cores, files under tmp_path."""
    monkeypatch.setattr(bench, "LoadGenerator", FakeLoad)
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    monkeypatch.setattr(bench, "usable_cores", lambda: (2, None))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "save_results", lambda results, name: tmp_path / f"{name}.json")
    return tmp_path


def test_quiet_sweep_runs_at_the_loaded_runs_thread_count(monkeypatch, fake_machine):
    calls = []

    def fake_profile(args, out, threads):
        calls.append((threads, FakeLoad.running))
        if threads == "auto":  # a zoo profile that predates --threads auto
            return subprocess.CompletedProcess([], 2, "", "error: threads: expected a positive integer, got 'auto'\n")
        out.write_text("\n".join(json.dumps(c) for c in run(threads=int(threads))) + "\n")
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(bench, "_profile", fake_profile)
    monkeypatch.setattr(bench, "auto_threads", lambda requested: 3)
    args = bench._parse([])
    bench._check(args)
    out = bench.run_pair(args, "spin", 1)
    assert calls == [("auto", True), ("3", True), ("3", False)]  # loaded under load, quiet without, same threads
    assert out["threads"] == 3 and out["passed"]
    assert Path(out["files"]["quiet"]).parent == fake_machine / "bench-out" / "contention"


def _write_run(perturb=None, flags=None):
    def fake_profile(args, out, threads):
        out.write_text("\n".join(json.dumps(c) for c in run(perturb, flags, threads=int(threads))) + "\n")
        return subprocess.CompletedProcess([], 0, "", "")
    return fake_profile


def test_main_prints_every_target_and_exits_by_them(monkeypatch, fake_machine, capsys):
    monkeypatch.setattr(bench, "_profile", _write_run())
    assert bench.main(["--settings", "spin,matmul", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("PASS") == 10 and "FAIL" not in text and "all targets met" in text
    assert "probe not wired" in text  # the synthetic records carry no contention fields

    slow = {("ponet", "train", T): 1.3 for T in (512, 1024)}  # unflagged and 30% off
    monkeypatch.setattr(bench, "_profile", lambda a, o, t: _write_run(slow if "loaded" in o.name else None)(a, o, t))
    assert bench.main(["--settings", "spin", "--threads", "1"]) == 1
    text = capsys.readouterr().out
    assert "outside 15% and not flagged            2" in text and "a target was missed" in text


def test_a_failed_sweep_is_one_line_exit_1(monkeypatch, fake_machine, capsys):
    monkeypatch.setattr(bench, "_profile", lambda a, o, t: subprocess.CompletedProcess([], 1, "", "Traceback\nboom\n"))
    assert bench.main(["--settings", "spin", "--threads", "1"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: the loaded sweep failed (exit 1): boom"]


def test_one_core_is_too_few(monkeypatch, capsys):
    monkeypatch.setattr(bench, "usable_cores", lambda: (1, None))
    assert bench.main([]) == 2
    assert capsys.readouterr().err == "error: cores: expected at least 2 usable cores (the load takes one, the sweep another), got 1\n"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, expected", [
    (["--rounds", "0"], "error: rounds: expected a positive integer, got '0'"),
    (["--profile-rounds", "x"], "error: profile rounds: expected a positive integer, got 'x'"),
    (["--settings", "spin,idle"], "error: settings: expected a comma list of spin, matmul, none, got 'idle'"),
    (["--threads", "two"], "error: threads: expected auto or a positive integer, got 'two'"),
    (["--time-budget", "-1"], "error: time budget: expected a positive number, got '-1'"),
    (["--mixers", "ponnet"], "error: mixer: unknown name 'ponnet'"),
    (["--mixers", "ponet,fnet"], "error: baseline: expected one of the mixers (ponet, fnet), got 'softmax'"),
    (["--under-load", "spin"], "error: under load: expected a command after --"),
    (["--frobnicate"], "error: unrecognized arguments: --frobnicate"),
])
def test_bad_input_is_one_line_exit_2(argv, expected, capsys):
    assert bench.main(argv) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.out + captured.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_bad_input_from_the_command_line():
    proc = subprocess.run([sys.executable, "benchmarks/bench_contention.py", "--load-procs", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: load procs: expected a positive integer, got 'x'" and proc.stdout == ""


# --------------------------------------------------------------------------- the load generator
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["spin", "matmul"])
def test_load_generator_starts_burns_and_stops(kind):
    with bench.LoadGenerator(kind, 1) as load:
        (pid,) = load.pids
        cpu0 = _cpu(pid)
        time.sleep(0.5)
        assert _alive(pid) and _cpu(pid) > cpu0  # it runs
    assert not _alive(pid) and load.pids == []
    load.stop()  # twice is harmless


def test_load_generator_bad_arguments():
    with pytest.raises(ValueError, match="load: expected one of spin, matmul, got 'idle'"):
        bench.LoadGenerator("idle")
    with pytest.raises(ValueError, match="load procs: expected a positive integer, got 0"):
        bench.LoadGenerator("spin", 0)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_load_workers_die_with_a_killed_parent():
    code = ("import sys; sys.path.insert(0, '.'); from benchmarks.bench_contention import LoadGenerator; "
            "g = LoadGenerator('spin', 1).start(); print(g.pids[0], flush=True); import time; time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):  # never leave a burner behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the load worker outlived its killed parent")

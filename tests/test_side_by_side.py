"""Round 1 of an interleaved sweep with cells side by side (profiler/side_by_side.py): who may run
beside another, waves that keep a sequential sweep's decisions, results in the calling thread."""

import json
import threading
import time

import pytest

from profiler.settings import plan_profile
from profiler.side_by_side import SIDE_EXPONENT, free_workers, run_side_by_side, side_bound


def _cells(mixers="softmax,fnet,ponet", lengths="8,16", modes="forward,train"):
    cells, _ = plan_profile(mixers=mixers, lengths=lengths, modes=modes, dim=16, heads=2, device="cpu",
                            out="unused.jsonl", contention=False)
    return cells


class _Recorder:
    """Executors that log when each cell runs (start, end, thread) and return a canned result."""

    def __init__(self, seconds=0.05, results=None):
        self.seconds, self.results = seconds, results or {}
        self.lock = threading.Lock()
        self.spans: dict[str, tuple[float, float]] = {}
        self.busy: set[int] = set()
        self.clash = False  # one executor used by two cells at once

    def executor(self):
        rec = self

        class _Ex:
            def run(self, cell, opts, timeout):
                with rec.lock:
                    rec.clash |= id(self) in rec.busy
                    rec.busy.add(id(self))
                t0 = time.monotonic()
                time.sleep(rec.seconds)
                with rec.lock:
                    rec.spans[cell.key] = (t0, time.monotonic())
                    rec.busy.discard(id(self))
                return rec.results.get(cell.key, {"status": "ok", "mem_peak_bytes": 1000, "mem_abs_peak_bytes": 5000})

        return _Ex()

    def most_at_once(self):
        """The most cells that ran at one instant."""
        events = sorted([(t0, 1) for t0, _ in self.spans.values()] + [(t1, -1) for _, t1 in self.spans.values()])
        now = best = 0
        for _, step in events:  # an end sorts before a start at the same instant
            now += step
            best = max(best, now)
        return best

    def overlapping(self, key):
        a0, a1 = self.spans[key]
        return [k for k, (b0, b1) in self.spans.items() if k != key and b0 < a1 and a0 < b1]


def _run(cells, rec, *, workers=2, budget=None, untimed=lambda c: True, series=None, decide=None, after=None):
    handled, main = [], []
    history = series if series is not None else {}

    def prepare(cell):
        return ({"untimed": True} if untimed(cell) else {}), history.get(cell.label, [])

    def handle(cell, result, started, wall):
        main.append(threading.current_thread() is threading.main_thread())
        handled.append((cell, result))
        if after is not None:
            after(cell, result)
        if result.get("status") == "ok":  # as the sweep does: a measured cell feeds its series
            history.setdefault(cell.label, []).append({"T": cell.T, **result})

    run_side_by_side(cells, workers=workers, budget=budget, decide=decide or (lambda c: None), prepare=prepare,
                     handle=handle, started=lambda c: None, executors=[rec.executor() for _ in range(workers)],
                     timeout=None)
    assert all(main)  # every result reaches the caller's thread
    assert not rec.clash
    return handled


def test_workers_are_the_free_cores_over_the_threads():
    assert free_workers(2, 1) == 2
    assert free_workers(2, 2) == 1
    assert free_workers(2, 1, busy=1) == 1
    assert free_workers(16, 4) == 4
    assert free_workers(1, 4) == 1
    assert free_workers(2, 1, busy=5) == 1


def test_the_bound_grows_the_longest_measured_cell_as_t_cubed():
    assert side_bound([], 64) is None
    assert side_bound([{"T": 64, "mem_peak_bytes": 10, "mem_abs_peak_bytes": 100}], 64) is None  # not shorter
    hist = [{"T": 8, "mem_peak_bytes": 1, "mem_abs_peak_bytes": 50},
            {"T": 16, "mem_peak_bytes": 10, "mem_abs_peak_bytes": 100}]
    assert side_bound(hist, 32) == int(100 + 10 * (2 ** SIDE_EXPONENT - 1))


def test_untimed_cells_with_a_bound_run_two_at_once_and_the_first_length_alone():
    cells = _cells(lengths="8,16,32")
    rec = _Recorder()
    handled = _run(cells, rec)
    assert sorted(c.key for c, _ in handled) == sorted(c.key for c in cells)  # each once
    for cell in cells:
        beside = rec.overlapping(cell.key)
        if cell.T == 8:  # no shorter cell: no bound, alone
            assert beside == []
    assert rec.most_at_once() == 2  # two workers, and both used



def test_a_timed_cell_or_one_over_the_budget_runs_alone():
    cells = _cells(lengths="8,16")
    rec = _Recorder()
    timed = {c.key for c in cells if c.label == "fnet"}
    _run(cells, rec, untimed=lambda c: c.key not in timed)
    for key in timed:
        assert rec.overlapping(key) == []
    rec = _Recorder()
    # bound at T=16: 5000 + 1000 * 7 = 12000 bytes; two of them need 24000
    _run(cells, rec, budget=20000)
    assert all(rec.overlapping(c.key) == [] for c in cells)
    rec = _Recorder()
    _run(cells, rec, budget=30000)
    assert any(rec.overlapping(c.key) for c in cells if c.T == 16)


def test_waves_keep_the_sequential_decisions():
    """A train cell starts after every forward cell of its length ended, a longer cell after every
    shorter one; a cell decided without running (after an OOM) never reaches an executor."""
    cells = _cells(lengths="8,16,32")
    oom = next(c for c in cells if c.label == "ponet" and c.mode == "forward" and c.T == 16)
    rec = _Recorder(results={oom.key: {"status": "oom"}})
    failed: set[str] = set()

    def decide(cell):
        if cell.label in failed:
            return {"status": "skipped", "reason": "after OOM"}
        return None

    def remember(cell, result):
        if result.get("status") == "oom":
            failed.add(cell.label)

    out = _run(cells, rec, decide=decide, after=remember)
    assert sorted(c.key for c, _ in out) == sorted(c.key for c in cells)  # the skipped ones too
    ran = {c.key for c in cells if c.key in rec.spans}
    skipped = {c.key for c in cells if c.label == "ponet" and (c.T > 16 or (c.T == 16 and c.mode == "train"))}
    assert ran == {c.key for c in cells} - skipped
    for a in cells:
        for b in cells:
            if a.key in ran and b.key in ran and (a.T, a.mode == "train") < (b.T, b.mode == "train"):
                assert rec.spans[a.key][1] <= rec.spans[b.key][0] + 1e-3, (a.title, b.title)


def test_workers_need_an_executor_each():
    with pytest.raises(ValueError, match="workers: expected 1..1"):
        run_side_by_side([], workers=2, budget=None, decide=lambda c: None, prepare=lambda c: ({}, []),
                         handle=lambda *a: None, started=lambda c: None, executors=[object()], timeout=None)


def test_an_interleaved_sweep_in_processes_runs_round_1_side_by_side(tmp_path, monkeypatch):
    """Two fork workers in round 1 (forced, whatever this machine's cores): every cell measured and
    written once, in plan order, the same statuses and memory fields as one worker gives."""
    import profiler.sweep as sweep
    from profiler import run_profile

    runs = {}
    for workers in (1, 2):
        monkeypatch.setattr(sweep, "side_workers", lambda *a, w=workers, **k: w)
        out = run_profile(mixers="softmax,fnet", lengths="16,32,64", modes="forward,train", dim=16, heads=2,
                          device="cpu", out=str(tmp_path / f"w{workers}.jsonl"), time_budget=0.02, interleave=True,
                          progress=False, threads=1)
        lines = [json.loads(line) for line in open(out)]
        assert lines[0]["settings"]["side_by_side"] == workers
        runs[workers] = [r for r in lines if r.get("kind") == "cell"]
    one, two = runs[1], runs[2]
    assert [r["key"] for r in two] == [r["key"] for r in one]  # plan order
    for a, b in zip(one, two):
        assert a["status"] == b["status"] == "ok"
        assert b["time_method"] == "interleaved" and b["mem_method"] == a["mem_method"] == "vmhwm"
        assert b["mem_tensor_peak_bytes"] == a["mem_tensor_peak_bytes"] > 0 and b["flops_counted"] == a["flops_counted"]

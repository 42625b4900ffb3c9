"""The profiler: length parser, records, fits, and the runner on dummy steps (isolated and in
process) with simulated OOMs, a timeout, crashes and the OOM frontier.

The dummy steps are built by :func:`build_dummy` below, passed to the runner by reference (the
zygote imports this file), so nothing is registered in the mixer registry.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from profiler import load_results, parse_lengths
from profiler.cases import Cell, format_label, parse_mixers, parse_modes, parse_size, plan_cells
from profiler.fit import fit_records
from profiler.builders import Step
from profiler.flops import count_flops
from profiler.memory import LiveTensorTracker
from profiler.timing import summarise_samples
from profiler.records import RecordWriter, read_records
from profiler.sweep import run_sweep
from zoo.errors import ZooValueError

BUILDER = f"{Path(__file__).resolve()}:build_dummy"
MiB = 2**20


# --------------------------------------------------------------------------- dummy steps
def build_dummy(cell: Cell, device, dtype) -> Step:
    """Steps whose behaviour is named by ``cell.extra["do"]``."""
    do = cell.extra.get("do", "ok")
    a = torch.randn(32, 32, dtype=dtype, device=device)

    def ok():
        return a @ a

    def alloc():  # a fresh, touched 64 MiB tensor per call
        return torch.ones(16 * MiB, dtype=torch.float32).sum()

    def memory_error():
        raise MemoryError("simulated")

    def torch_oom():
        raise torch.OutOfMemoryError("simulated allocator failure")

    def huge():  # past the RLIMIT_AS budget: a real, catchable allocation failure
        return torch.ones(2**31, dtype=torch.float32)

    def sigkill():
        os.kill(os.getpid(), signal.SIGKILL)

    def fill_then_sigkill():  # resident memory at the budget, then the kill the OOM killer would send
        t = torch.ones(120 * MiB, dtype=torch.float32)  # 480 MiB, touched
        os.kill(os.getpid(), signal.SIGKILL)
        return t

    def sleep():
        time.sleep(60)

    def exit3():
        os._exit(3)

    def nan():
        return torch.full((4,), float("nan"))

    def zoo_error():
        raise ZooValueError("dummy: dtype: expected fp32, got something else")

    fns = dict(ok=ok, alloc=alloc, memory_error=memory_error, torch_oom=torch_oom, huge=huge, sigkill=sigkill, fill_then_sigkill=fill_then_sigkill,
               sleep=sleep, exit3=exit3, nan=nan, zoo_error=zoo_error)

    def check(out):
        if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
            raise RuntimeError("check: output: non-finite values (NaN or inf)")

    return Step(fns[do], params=0, flops_analytic=2.0 * 32**3, check=check)


def dummy_cell(label: str, do: str, T: int = 32, mode: str = "forward") -> Cell:
    return Cell(label=label, mixer="dummy", overrides={}, config={"do": do}, scope="mixer", mode=mode, T=T,
                batch=1, dim=32, heads=1, depth=None, dtype="fp32", device="cpu", extra={"do": do})


def cells_of(path: Path) -> dict[str, dict]:
    return {(r["label"], r["T"], r["mode"]): r for r in read_records(path) if r["kind"] == "cell"}


# --------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    "text, expected",
    [
        ("1k..16k", [1024, 2048, 4096, 8192, 16384]),
        ("512,2048,3000", [512, 2048, 3000]),
        ("1k..4k:x1.5", [1024, 1536, 2304, 3456]),
        ("1k..4k:+1k", [1024, 2048, 3072, 4096]),
        ("1.5k, 2m", [1536, 2 * 1024**2]),
        ("256..1k,64,256", [64, 256, 512, 1024]),
        ("3k..16k", [3072, 6144, 12288]),
        ("7", [7]),
    ],
)
def test_parse_lengths(text, expected):
    assert parse_lengths(text) == expected


@pytest.mark.parametrize("text", ["", "1k..", "..4k", "abc", "4k..1k", "1k..4k:x1", "1k..4k:y2", "0", "-5",
                                  "1.3", "1k,,2k", "512:x2", "1k..4k:x", "1q"])
def test_parse_lengths_rejects(text):
    with pytest.raises(ZooValueError, match="lengths"):
        parse_lengths(text)


def test_parse_size_modes_and_labels():
    assert parse_size("8g") == 8 * 2**30
    assert parse_size("512MiB") == 512 * MiB
    assert parse_size("1.5GB") == int(1.5 * 2**30)
    assert parse_size(1000) == 1000
    with pytest.raises(ZooValueError, match="memory budget"):
        parse_size("lots")
    assert parse_modes("both") == ("forward", "train")
    assert parse_modes("train") == ("train",)
    with pytest.raises(ZooValueError, match="mode"):
        parse_modes("backward")
    assert format_label("softmax", {"impl": "eager"}) == "softmax[impl=eager]"
    assert format_label("softmax", {}) == "softmax"


def test_parse_mixers_overrides_and_errors():
    choices = parse_mixers("softmax[impl=eager],softmax")
    assert [c.label for c in choices] == ["softmax[impl=eager]", "softmax"]
    assert dict(choices[0].overrides) == {"impl": "eager"}
    with pytest.raises(ZooValueError, match="Did you mean 'softmax'"):
        parse_mixers("sofmax")
    with pytest.raises(ZooValueError, match="unknown config key 'imp'"):
        parse_mixers("softmax[imp=eager]")
    with pytest.raises(ZooValueError, match="--heads"):
        parse_mixers("softmax[heads=8]")
    with pytest.raises(ZooValueError, match="closing"):
        parse_mixers("softmax[impl=eager")
    # a preset may name mixers that are not registered (yet): unsupported cells, not a crash
    ghost = parse_mixers("softmax,no_such_mixer", allow_unregistered=True)
    assert [c.registered for c in ghost] == [True, False]
    cells = plan_cells(ghost, [16], ("forward",), scope="mixer", batch=1, dim=16, heads=2, depth=None,
                       dtype="fp32", device="cpu")
    assert cells[0].unsupported is None and "not a registered mixer" in cells[1].unsupported
    # impossible heads/dim and bad override values raise the config's own error
    with pytest.raises(ZooValueError, match="divisor"):
        plan_cells(parse_mixers("softmax"), [16], ("forward",), scope="mixer", batch=1, dim=16, heads=3,
                   depth=None, dtype="fp32", device="cpu")
    with pytest.raises(ZooValueError, match="impl"):
        plan_cells(parse_mixers("softmax[impl=magic]"), [16], ("forward",), scope="mixer", batch=1, dim=16,
                   heads=2, depth=None, dtype="fp32", device="cpu")


def test_cell_key_is_content_hash():
    a, b = dummy_cell("x", "ok"), dummy_cell("x", "ok")
    assert a.key == b.key
    assert dummy_cell("x", "ok", T=64).key != a.key
    assert dummy_cell("x", "ok", mode="train").key != a.key
    assert Cell.from_dict(json.loads(json.dumps(a.to_dict()))).key == a.key


# --------------------------------------------------------------------------- records and fits
def test_records_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.append({"kind": "header", "schema": 1, "run_id": "r1", "command": ["zoo", "profile"], "env": {"torch": "x", "loadavg": [1.0, 2.0]}})
        w.append({"kind": "cell", "schema": 1, "run_id": "r1", "key": "k1", "mixer": "a", "label": "a", "scope": "mixer", "mode": "forward", "T": 8, "status": "ok",
                  "time_median_s": 0.5, "mem_peak_bytes": float("nan"), "time_samples": [0.4, 0.5, 0.6]})
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "cell", "key": "partial')  # a line cut by a crash
    with RecordWriter(path) as w:  # starts on a fresh line
        w.append({"kind": "cell", "schema": 1, "run_id": "r1", "key": "k2", "mixer": "a", "label": "a", "scope": "mixer", "mode": "forward", "T": 16, "status": "oom"})
        w.append({"kind": "cell", "schema": 1, "run_id": "r1", "key": "k1", "mixer": "a", "label": "a", "scope": "mixer", "mode": "forward", "T": 8, "status": "ok", "time_median_s": 0.25})
    recs = list(read_records(path))
    assert [r["kind"] for r in recs] == ["header", "cell", "cell", "cell"]
    assert recs[1]["mem_peak_bytes"] is None  # NaN is never written as a number
    assert recs[1]["time_samples"] == [0.4, 0.5, 0.6]
    df = load_results(path)
    assert len(df) == 2  # the later k1 supersedes the first
    assert df.set_index("key").loc["k1", "time_median_s"] == 0.25
    assert df.set_index("key").loc["k2", "status"] == "oom"
    assert (df["env_torch"] == "x").all() and (df["command"] == "zoo profile").all()
    with pytest.raises(ZooValueError, match="no such file"):
        load_results(tmp_path / "missing.jsonl")


def test_fit_records_find_exponents():
    cells = []
    for i, T in enumerate([256, 512, 1024, 2048, 4096, 8192]):
        t = 1e-3 + 2e-9 * T**2
        cells.append({"key": f"k{i}", "label": "m", "mixer": "m", "scope": "mixer", "mode": "forward", "batch": 1,
                      "dim": 8, "heads": 1, "depth": None, "dtype": "fp32", "device": "cpu", "causal": False,
                      "T": T, "status": "ok", "time_median_s": t, "time_samples": [t * 0.99, t, t * 1.01],
                      "mem_peak_bytes": 1000.0 * T})
    cells.append(dict(cells[-1], key="oom", T=16384, status="oom", time_median_s=None, mem_peak_bytes=None))
    fits = {f["metric"]: f for f in fit_records(cells, {"m": {"time": 1.0, "memory": 1.0}})}
    assert fits["time"]["k"] == pytest.approx(2.0, abs=0.05)
    assert fits["time"]["k_lo"] <= fits["time"]["k"] <= fits["time"]["k_hi"]
    assert fits["time"]["flagged"] is True and fits["time"]["declared"] == 1.0
    assert fits["memory"]["k"] == pytest.approx(1.0, abs=0.05) and fits["memory"]["flagged"] is False
    assert 16384 not in fits["time"]["lengths"]  # censored
    assert fit_records(cells[:2]) == []  # too few lengths


# --------------------------------------------------------------------------- measurement pieces
def test_tensor_tracker_and_flop_counter():
    base = torch.randn(256, 256)
    tracker = LiveTensorTracker()
    with tracker:
        a = base * 2  # 256 KiB, live
        b = a.t()  # a view: no new bytes
        c = torch.ones(1024, 1024)  # 4 MiB
        del c
        d = b.contiguous()  # 256 KiB
    assert tracker.peak == 256 * 256 * 4 + 4 * MiB
    assert tracker.current == 2 * 256 * 256 * 4
    del a, b, d
    # CPU SDPA and FFT are counted (torch's counter has no formula for them)
    q = torch.randn(1, 2, 64, 8)
    sdpa = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert sdpa == 2 * (2 * 2 * 64 * 64 * 8)
    x = torch.randn(1, 64, 16)
    fft = count_flops(lambda: torch.fft.rfft2(x))
    assert fft == pytest.approx(2.5 * 64 * 16 * math.log2(64 * 16), rel=0.01)


def test_resident_call_runs_without_a_dispatch_mode():
    """A dispatch mode's own Python allocations were charged to the step (+3 MiB, 6%, on poolingformer
    forward at 4k): the resident call is plain; the tracker gets a call of its own unless given its peak."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    from profiler.memory import memory_pass_cpu

    modes = []

    def step():
        modes.append(_get_current_dispatch_mode())
        return torch.ones(512, 1024) * 2  # 2 MiB, live at the peak

    got = memory_pass_cpu(step, track=True)
    assert modes[0] is None and isinstance(modes[1], LiveTensorTracker) and len(modes) == 2
    assert got["mem_tensor_peak_bytes"] == 2 * 2 * MiB  # the ones and the product
    modes.clear()
    got = memory_pass_cpu(step, track=True, tensor_peak=123)  # a fake pass's peak: one plain call
    assert modes == [None] and got["mem_tensor_peak_bytes"] == 123
    modes.clear()
    assert "mem_tensor_peak_bytes" not in memory_pass_cpu(step, track=False) and modes == [None]


@pytest.mark.parametrize("name,mode", [("retnet", "train"), ("mamba2", "forward"), ("fnet", "train")])
def test_fake_pass_peak_and_flops_equal_a_real_tracked_call(name, mode):
    """The fake pass is one dispatch mode (tracker + FLOP tally): its peak is the real call's (with
    FlopCounterMode stacked on the tracker, its decompositions added 12% to retnet train's peak) and
    its FLOPs are FlopCounterMode's."""
    import dataclasses

    from profiler.builders import build_step
    from profiler.cases import Cell
    from profiler.cell import _fake_pass
    from profiler.flops import flop_counter
    from zoo.registry import get_config

    config = dataclasses.asdict(get_config(name, dim=32, heads=2))
    cell = Cell(label=name, mixer=name, overrides={}, config=config, scope="mixer", mode=mode, T=256, batch=1,
                dim=32, heads=2, depth=None, dtype="fp32", device="cpu")
    fake = _fake_pass(cell, build_step, torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    step = build_step(cell, torch.device("cpu"), torch.float32)
    tracker = LiveTensorTracker()
    with tracker:
        tracker.mark()
        out = step.fn()
        del out
    counter = flop_counter()
    with counter:
        step.fn()
    assert fake["mem_predicted_bytes"] == tracker.window_peak
    assert fake["flops_counted"] == float(counter.get_total_flops()) > 0


def test_fake_pass_of_a_model_training_step_is_the_steady_step_the_memory_pass_measures():
    """The memory pass measures a training step after warm-up: the optimizer's state is live before
    it. The fake pass must predict that step, not the first (which also creates AdamW's state, 2x the
    parameters: softmax at T=64 predicted 2x the real peak), and the projection must agree."""
    import dataclasses

    from profiler.builders import build_step
    from profiler.cases import Cell
    from profiler.cell import _fake_pass
    from profiler.devices import get_device
    from profiler.project import fake_costs
    from zoo.registry import get_config

    config = dataclasses.asdict(get_config("softmax", dim=64, heads=2))
    cell = Cell(label="softmax", mixer="softmax", overrides={}, config=config, scope="model", mode="train", T=64,
                batch=1, dim=64, heads=2, depth=1, dtype="fp32", device="cpu")
    fake = _fake_pass(cell, build_step, torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    step = build_step(cell, torch.device("cpu"), torch.float32)
    step.fn()  # warm-up: AdamW's state now exists, as in the memory pass
    step.reset()
    tracker = LiveTensorTracker()
    with tracker:
        tracker.mark()
        out = step.fn()
        del out
    assert fake["mem_predicted_bytes"] == tracker.window_peak > 0
    projected = fake_costs(cell, get_device("h100"))
    assert projected["mem_peak_bytes"] == fake["mem_predicted_bytes"]
    assert projected["mem_abs_peak_bytes"] == fake["_predicted_abs"]


def test_summarise_samples():
    s = summarise_samples([1.0, 1.0, 1.0, 2.0])
    assert s["time_median_s"] == 1.0 and s["time_n"] == 4 and s["steps_per_s"] == 1.0
    assert s["noisy"] is True
    assert summarise_samples([1.0] * 5)["noisy"] is False


# --------------------------------------------------------------------------- the runner
def test_isolated_runner_statuses(tmp_path):
    """One isolated sweep: ok, a measured 64 MiB peak, simulated and real OOMs, a kill, a crash,
    NaN output, a mixer refusing, a timeout, and the OOM frontier."""
    cells = [
        dummy_cell("ok", "ok"),
        dummy_cell("alloc", "alloc"),
        dummy_cell("memory_error", "memory_error"),
        dummy_cell("memory_error", "memory_error", T=64),  # after the OOM at T=32
        dummy_cell("torch_oom", "torch_oom"),
        dummy_cell("huge", "huge"),
        dummy_cell("sigkill", "sigkill"),
        dummy_cell("sigkill", "sigkill", T=64),  # a kill without evidence of an OOM skips nothing
        dummy_cell("fill_then_sigkill", "fill_then_sigkill"),
        dummy_cell("exit3", "exit3"),
        dummy_cell("nan", "nan"),
        dummy_cell("zoo_error", "zoo_error"),
    ]
    sleepers = [dummy_cell("sleep", "sleep"), dummy_cell("sleep", "sleep", T=64)]  # the second after the timeout
    # the sleepers in a sweep of their own with a short timeout: the others' timeout is long enough for
    # a busy machine (filling 480 MiB once took past a 2 s timeout, and the kill was read as a timeout)
    run_sweep(cells, out=tmp_path / "iso.jsonl", builder=BUILDER, predict=False, timeout=30.0,
              memory_budget=512 * MiB, threads=1, time_budget=0.05)
    run_sweep(sleepers, out=tmp_path / "sleep.jsonl", builder=BUILDER, predict=False, timeout=2.0,
              memory_budget=512 * MiB, threads=1, time_budget=0.05)
    cells += sleepers
    got = {**cells_of(tmp_path / "iso.jsonl"), **cells_of(tmp_path / "sleep.jsonl")}
    status = {k[0] + ("@64" if k[1] == 64 else ""): (r["status"], r["inferred"], r["reason"]) for k, r in got.items()}
    assert len(got) == len(cells)
    assert status["ok"][0] == "ok"
    ok = got[("ok", 32, "forward")]
    assert ok["time_n"] >= 3 and len(ok["time_samples"]) == ok["time_n"] and ok["threads"] == 1
    assert ok["time_median_s"] > 0 and ok["steps_per_s"] == pytest.approx(1 / ok["time_median_s"])
    alloc = got[("alloc", 32, "forward")]
    assert alloc["status"] == "ok" and alloc["mem_method"] == "vmhwm"
    assert 60 * MiB <= alloc["mem_peak_bytes"] <= 90 * MiB  # the 64 MiB tensor, seen by the kernel
    assert 64 * MiB <= alloc["mem_tensor_peak_bytes"] <= 64 * MiB + 64  # and by the tracker (+ the sum)
    assert alloc["mem_disagree"] is False
    assert status["memory_error"][:2] == ("oom", False) and "MemoryError" in status["memory_error"][2]
    assert status["memory_error@64"] == ("skipped", True, "after OOM at T=32")
    assert status["torch_oom"][0] == "oom"
    assert status["huge"][0] == "oom" and "allocate" in status["huge"][2]
    kill = got[("sigkill", 32, "forward")]
    assert kill["status"] == "killed" and "SIGKILL" in kill["reason"] and kill["signal"] == "SIGKILL"
    assert kill["rss_peak_bytes"] > 0
    assert status["sigkill@64"][:2] == ("killed", False)
    fill = got[("fill_then_sigkill", 32, "forward")]
    assert fill["status"] == "oom" and "OOM killer" in fill["reason"] and fill["rss_peak_bytes"] >= 0.9 * 512 * MiB
    assert status["exit3"][0] == "error" and "exit code 3" in status["exit3"][2]
    assert status["nan"][0] == "error" and "non-finite" in status["nan"][2]
    # a ZooError raised while running is an error with its text: only a spec declares "unsupported"
    assert status["zoo_error"][0] == "error" and "dtype: expected fp32" in status["zoo_error"][2]
    assert status["sleep"][0] == "timeout" and "2 s" in status["sleep"][2]
    assert status["sleep@64"] == ("skipped", True, "after timeout at T=32")
    for r in got.values():
        assert r["time_median_s"] is None or r["status"] == "ok"  # never a number for a failed cell


def test_in_process_runner(tmp_path):
    cells = [dummy_cell("ok", "ok"), dummy_cell("memory_error", "memory_error"), dummy_cell("nan", "nan"),
             dummy_cell("zoo_error", "zoo_error"), dummy_cell("ok", "ok", mode="train")]
    out = tmp_path / "inline.jsonl"
    run_sweep(cells, out=out, builder=BUILDER, predict=False, isolate=False, threads=1, time_budget=0.05)
    got = cells_of(out)
    assert [got[(c.label, c.T, c.mode)]["status"] for c in cells] == ["ok", "oom", "error", "error", "ok"]
    header = next(r for r in read_records(out) if r["kind"] == "header")
    assert header["settings"]["executor"] == "inline" and header["env"]["threads"] == 1
    # the same file again: refused without --resume / --overwrite; resume runs nothing new
    with pytest.raises(ZooValueError, match="already holds records"):
        run_sweep(cells, out=out, builder=BUILDER, isolate=False, threads=1)
    run_sweep(cells, out=out, builder=BUILDER, predict=False, isolate=False, threads=1, time_budget=0.05, resume=True)
    keys = [r["key"] for r in read_records(out) if r["kind"] == "cell"]
    assert len(keys) == len(cells) == len(set(keys))


def test_fake_prediction_marks_hopeless_cells(tmp_path):
    """A real mixer whose predicted peak exceeds the budget is recorded as an inferred OOM, and the
    longer length is skipped, without running either."""
    cells = plan_cells(parse_mixers("softmax[impl=eager]"), [32, 4096, 8192], ("forward",), scope="mixer", batch=1,
                       dim=16, heads=2, depth=None, dtype="fp32", device="cpu")
    out = tmp_path / "pred.jsonl"
    run_sweep(cells, out=out, isolate=False, threads=1, time_budget=0.05, memory_budget=64 * MiB)
    got = cells_of(out)
    small, big, bigger = (got[("softmax[impl=eager]", T, "forward")] for T in (32, 4096, 8192))
    assert small["status"] == "ok" and small["mem_predicted_bytes"] > 0
    assert small["flops_counted"] == pytest.approx(small["flops_analytic"], rel=0.01)
    assert big["status"] == "oom" and big["inferred"] is True and "predicted peak" in big["reason"]
    assert big["mem_predicted_bytes"] >= 2 * 4096 * 4096 * 4  # two (B, H, T, T) fp32 matrices
    assert bigger["status"] == "skipped" and bigger["reason"] == "after OOM at T=4096"


def test_spawn_executor(tmp_path):
    """The CUDA path's executor (a fresh interpreter per cell), exercised on the CPU."""
    out = tmp_path / "spawn.jsonl"
    run_sweep([dummy_cell("alloc", "alloc")], out=out, builder=BUILDER, predict=False, threads=1, time_budget=0.05,
              executor="spawn", timeout=60)
    cell = cells_of(out)[("alloc", 32, "forward")]
    assert cell["status"] == "ok" and cell["time_n"] >= 3
    assert 60 * MiB <= cell["mem_peak_bytes"] <= 90 * MiB
    header = next(r for r in read_records(out) if r["kind"] == "header")
    assert header["settings"]["executor"] == "spawn"


def test_cell_records_carry_the_specs_class_from(tmp_path):
    """bigbird declares where its linear classes begin ((5 + 2r)·b + 1: full attention below);
    every cell record carries it (null for a mixer whose classes hold at every T)."""
    from profiler import run_profile
    from profiler.builders import declared_classes
    from zoo.registry import get_config

    assert declared_classes("bigbird", {})["class_from"] == (5 + 2 * 3) * 64 + 1 == 705
    assert declared_classes("softmax", {})["class_from"] is None
    out = run_profile(mixers="bigbird[block_size=2,num_random_blocks=1],softmax", lengths="8,16", modes="forward",
                      dim=16, heads=2, device="cpu", out=str(tmp_path / "c.jsonl"), isolate=False, time_budget=0.02,
                      progress=False)
    cells = [json.loads(line) for line in open(out) if '"cell"' in line]
    got = {(r["mixer"], r["T"]): r["class_from"] for r in cells}
    assert got == {("bigbird", 8): 15, ("bigbird", 16): 15, ("softmax", 8): None, ("softmax", 16): None}
    assert get_config("bigbird", block_size=2, num_random_blocks=1).full_attention_blocks * 2 + 1 == 15

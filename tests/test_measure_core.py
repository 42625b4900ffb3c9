"""The measurement core's seams: the load probe in the timing room, warm-up counting, causal SDPA
FLOP formulas (the CUDA ops' too, called directly), OOM texts, executor choice, the supervisor's
timeout text, capabilities per config, the shared flag rule, padding, the SDPA backend from the
first real call, and the release after an in-process OOM."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from profiler.builders import Step, build_step, padding_mask
from profiler.cases import Cell, parse_mixers, plan_cells
from profiler.flops import extra_flop_formulas
from profiler.memory import is_oom
from profiler.settings import plan_profile
from profiler.timing import time_calls, warm_up
from reports.fit import fit_series, judge_exponent
from zoo.errors import ZooValueError

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- load probe
class EveryOtherContended:
    """A fake probe: every 2nd sample is contended; other processes used 1.5 cores then, else 0.1."""

    def __init__(self, all_contended: bool = False):
        self.n, self.all = 0, all_contended

    def begin(self) -> None:
        self.n += 1

    def end(self) -> dict:
        contended = self.all or self.n % 2 == 0
        return {"contended": contended, "other_cpu": 1.5 if contended else 0.1}


def _fast():
    return sum(range(200))


def test_probe_discards_contended_samples_and_retakes_them():
    probe, info = EveryOtherContended(), {}
    samples = time_calls(_fast, budget_s=0.2, min_block_s=0.002, info=info, probe=probe)
    # every sample wrapped in begin/end, and the first (sizing) call, shorter than a block, dropped
    assert probe.n == len(samples) + info["contended_samples"] + 1
    assert info["contended_samples"] >= len(samples) - 1 >= 2  # half were retaken
    assert info["contended"] is False
    assert 0.1 < info["other_cpu"] < 1.5  # mean over every sample taken, clean and contended


def test_probe_uses_contended_samples_when_no_clean_ones_come():
    info = {}
    samples = time_calls(_fast, budget_s=0.05, min_block_s=0.002, info=info, probe=EveryOtherContended(True))
    assert info["contended"] is True and len(samples) >= 3 and info["contended_samples"] == len(samples)
    assert info["other_cpu"] == pytest.approx(1.5)


def test_a_first_call_as_long_as_a_block_is_a_probed_sample():
    """A long step (a prefill, a 16k train step) must not spend its first timed call on sizing
    alone: with a probe, that call is judged and kept, as it is without one."""
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.012)

    class Quiet(EveryOtherContended):
        def end(self) -> dict:
            return {"contended": False, "other_cpu": 0.0}

    for probe in (Quiet(), None):
        calls.clear()
        info = {}
        samples = time_calls(slow, budget_s=0.001, min_reps=3, min_block_s=0.01, info=info, probe=probe)
        assert info["block"] == 1 and len(samples) == 3 and len(calls) == 3  # no call spent on sizing alone
        if probe is not None:
            assert probe.n == 3 and info["contended_samples"] == 0


def test_a_block_sized_from_single_calls_is_checked_on_a_quarter_of_it():
    """A single short call costs more than its share of a block (seen: CI's interleaved pass sized
    a 50 ms sample from 0.2 ms calls that ran at 0.1 ms in a block, so its samples lasted 25 ms).
    A fake clock: every call costs 0.1 ms, and each reading of the clock 0.1 ms more."""
    from profiler.timing import CONFIRM_MIN_BLOCK, Sampler, block_for, size_block

    calls = []

    def clock(fn):
        before = len(calls)
        fn()
        return 1e-4 * (len(calls) - before) + 1e-4

    def fn():
        calls.append(1)

    block = size_block(Sampler(clock, None), clock, fn, 0.05)
    # single calls read 0.2 ms (a 250-call block); a run of 62 reads 6.3 ms, 0.1016 ms a call
    assert block_for(2e-4, 0.05) == 250 and block == block_for(6.3e-3 / 62, 0.05) == 493
    assert len(calls) == 3 + 62 and 493 * 1e-4 >= 0.95 * 0.05
    calls.clear()  # a block this short is not worth checking: single calls size it alone
    assert size_block(Sampler(clock, None), clock, fn, 1.3e-3) == block_for(2e-4, 1.3e-3) == 7 < CONFIRM_MIN_BLOCK
    assert len(calls) == 3


def test_no_probe_means_no_contention_fields():
    info = {}
    time_calls(_fast, budget_s=0.02, min_block_s=0.002, info=info)
    assert set(info) == {"block"}


# --------------------------------------------------------------------------- warm-up
def test_warm_up_does_not_count_the_first_call():
    calls = []

    def fn():
        calls.append(time.perf_counter())
        if len(calls) == 1:
            time.sleep(0.3)  # one-off set-up, longer than the warm-up's minimum time

    fn()  # the caller's first call
    since = time.perf_counter()
    n, seconds = warm_up(fn, since=since, min_calls=2, min_seconds=0.05)
    assert n >= 2 and len(calls) == n + 1 and seconds >= 0.05


def test_every_record_has_two_warm_up_calls(tmp_path):
    from profiler.records import read_records
    from profiler.sweep import run_sweep

    cells = plan_cells(parse_mixers("softmax,fnet"), [16], ("forward", "train"), scope="mixer", batch=1, dim=16,
                       heads=2, depth=None, dtype="fp32", device="cpu")
    out = tmp_path / "w.jsonl"
    run_sweep(cells, out=out, isolate=False, threads=1, time_budget=0.02)
    recs = [r for r in read_records(out) if r["kind"] == "cell"]
    assert len(recs) == 4 and all(r["status"] == "ok" and r["warmup_calls"] >= 2 for r in recs)


# --------------------------------------------------------------------------- FLOP formulas
_Q = (2, 4, 128, 32)  # (B, H, T, P)
_FULL = 4 * 2 * 4 * 128 * 128 * 32  # QK^T and PV
_CAUSAL_CASES = [
    ("_scaled_dot_product_flash_attention", (_Q, _Q, _Q, 0.0), 4),
    ("_scaled_dot_product_efficient_attention", (_Q, _Q, _Q, None, True, 0.0), 6),
    ("_scaled_dot_product_cudnn_attention", (_Q, _Q, _Q, None, True, 0.0), 6),
    ("_scaled_dot_product_flash_attention_for_cpu", (_Q, _Q, _Q, 0.0), 4),
]


@pytest.mark.parametrize("name, head, position", _CAUSAL_CASES)
def test_sdpa_forward_formulas_halve_causal(name, head, position):
    formula = extra_flop_formulas()[getattr(torch.ops.aten, name)]
    assert position == len(head)  # is_causal comes next in the op's schema
    full = formula(*head, False, out_shape=None)
    assert full == _FULL
    assert formula(*head, True, out_shape=None) == _FULL // 2
    assert formula(_Q, _Q, _Q, out_shape=None, is_causal=True) == _FULL // 2


_BACKWARD = [
    ("_scaled_dot_product_flash_attention_backward", (_Q, _Q, _Q, _Q, _Q, (2, 4, 128), None, None, 128, 128, 0.0)),
    ("_scaled_dot_product_efficient_attention_backward", (_Q, _Q, _Q, _Q, None, _Q, (2, 4, 128), None, None, 0.0,
                                                          [True, True, True, False])),
    ("_scaled_dot_product_cudnn_attention_backward", (_Q, _Q, _Q, _Q, _Q, (2, 4, 128), None, None, None, None, None,
                                                      128, 128, 0.0)),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", (_Q, _Q, _Q, _Q, _Q, (2, 4, 128), 0.0)),
]


@pytest.mark.parametrize("name, head", _BACKWARD)
def test_sdpa_backward_formulas_halve_causal(name, head):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    op = getattr(torch.ops.aten, name)
    names = [a.name for a in op.default._schema.arguments]
    assert names.index("is_causal") == len(head)
    formula = extra_flop_formulas()[op]
    full = sdpa_backward_flop_count(_Q, _Q, _Q, _Q)
    assert formula(*head, False, out_shape=None) == full
    assert formula(*head, True, out_shape=None) == full // 2


def test_is_oom_knows_the_allocators_texts():
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert not is_oom(RuntimeError("shape mismatch"))


# --------------------------------------------------------------------------- executors and supervision
def test_fork_is_refused_for_cuda_cells(tmp_path):
    from profiler.sweep import run_sweep

    cell = Cell(label="x", mixer="x", overrides={}, config={}, scope="mixer", mode="forward", T=8, batch=1, dim=8,
                heads=1, depth=None, dtype="fp32", device="cuda")
    out = tmp_path / "c.jsonl"
    with pytest.raises(ZooValueError, match="executor: fork cannot serve CUDA cells"):
        run_sweep([cell], out=out, executor="fork")
    assert not out.exists()


def test_supervisor_reports_the_cell_timeout_not_the_allowance():
    import tempfile

    from profiler.isolation import supervise

    r, w = os.pipe()
    killed = []
    with tempfile.TemporaryFile() as log:
        t0 = time.monotonic()
        out = supervise(r, 0.2, lambda: killed.append(True), lambda: (-9, None), log, allowance=0.3)
    os.close(w)
    assert killed and time.monotonic() - t0 >= 0.2 + 0.5 + 0.3 - 0.05
    assert out["status"] == "timeout" and "the 0.2 s cell timeout" in out["reason"]


def test_in_process_oom_releases_the_allocator(monkeypatch):
    import profiler.memory
    from profiler.executors import InProcessExecutor

    seen = []
    monkeypatch.setattr(profiler.memory, "release_after_oom", lambda device: seen.append(device.type))
    cell = Cell(label="m", mixer="dummy", overrides={}, config={}, scope="mixer", mode="forward", T=8, batch=1, dim=8,
                heads=1, depth=None, dtype="fp32", device="cpu", extra={"do": "memory_error"})
    result = InProcessExecutor().run(cell, {"builder": f"{HERE.parent / 'test_profiler.py'}:build_dummy",
                                            "predict": False, "threads": 1, "time_budget_s": 0.02}, None)
    assert result["status"] == "oom" and seen == ["cpu"]


# --------------------------------------------------------------------------- capabilities, flags, padding
def test_capabilities_per_config():
    cells, settings = plan_profile(mixers="softmax,softmax[impl=eager]", lengths="16", modes="forward", dim=16,
                                   heads=2, device="cpu", out="unused.jsonl")
    assert settings.declared["softmax[impl=eager]"] == {"time": 2.0, "memory": 2.0, "class_from": None}
    assert settings.declared["softmax"] == {"time": 2.0, "memory": 1.0, "class_from": None}


def test_fit_records_use_each_series_class_and_the_report_rule():
    from profiler.fit import fit_records

    lengths = [256, 512, 1024, 2048, 4096, 8192]
    cells = []
    for label in ("softmax", "softmax[impl=eager]"):
        for T in lengths:
            cells.append({"kind": "cell", "key": f"{label}{T}", "label": label, "mixer": "softmax", "scope": "mixer",
                          "mode": "forward", "batch": 1, "dim": 16, "heads": 2, "dtype": "fp32", "device": "cpu",
                          "T": T, "status": "ok", "mem_peak_bytes": 4.0 * T * T, "time_median_s": 1e-9 * T * T})
    declared = {"softmax": {"time": 2.0, "memory": 1.0}, "softmax[impl=eager]": {"time": 2.0, "memory": 2.0}}
    fits = {(f["label"], f["metric"]): f for f in fit_records(cells, declared)}
    assert fits[("softmax[impl=eager]", "memory")]["flagged"] is False
    sdpa = fits[("softmax", "memory")]
    assert sdpa["flagged"] is True and sdpa["verdict"] == "flagged" and sdpa["declared"] == 1.0
    series = fit_series(lengths, [4.0 * T * T for T in lengths])
    assert judge_exponent(series, 1.0).status == "flagged" and judge_exponent(series, 2.0).status == "agrees"
    assert fits[("softmax[impl=eager]", "memory")]["verdict"] == "agrees"


def test_padding_cells_keep_old_keys_and_pass_the_mask():
    plain = plan_cells(parse_mixers("softmax"), [8], ("forward",), scope="mixer", batch=2, dim=16, heads=2,
                       depth=None, dtype="fp32", device="cpu")[0]
    padded = plan_cells(parse_mixers("softmax"), [8], ("forward",), scope="mixer", batch=2, dim=16, heads=2,
                        depth=None, dtype="fp32", device="cpu", pad_fraction=0.5)[0]
    assert "pad_fraction" not in plain.identity() and padded.key != plain.key
    assert padding_mask(2, 8, 0.0, torch.device("cpu")) is None
    assert padding_mask(2, 8, 0.25, torch.device("cpu")).sum(dim=1).tolist() == [6, 6]
    y = build_step(padded, torch.device("cpu"), torch.float32).fn()  # (B, T, D)
    assert torch.all(y[:, 4:] == 0) and torch.all(y[:, :4].abs().sum(-1) > 0)  # the mixer got the mask


def test_pad_fraction_is_validated_and_recorded(tmp_path):
    with pytest.raises(ZooValueError, match=r"pad fraction: expected a number in \[0, 1\)"):
        plan_profile(mixers="softmax", lengths="16", pad_fraction=1.0, device="cpu", out="x.jsonl")
    from profiler.records import read_records
    from profiler.sweep import run_profile

    out = tmp_path / "p.jsonl"
    run_profile(mixers="ponet", lengths="64", modes="forward", dim=16, heads=2, device="cpu", pad_fraction=0.25,
                out=out, isolate=False, time_budget=0.02, threads=1, progress=False)
    recs = list(read_records(out))
    header, cell = recs[0], next(r for r in recs if r["kind"] == "cell")
    assert cell["status"] == "ok" and cell["pad_fraction"] == 0.25 and header["settings"]["pad_fraction"] == 0.25
    assert header["env"]["float32_matmul_precision"] == torch.get_float32_matmul_precision()


# --------------------------------------------------------------------------- SDPA backend without a fake pass
def build_sdpa_not_fake(cell: Cell, device, dtype) -> Step:
    """SDPA that refuses fake tensors (as a data-dependent mixer would)."""
    from torch._subclasses.fake_tensor import FakeTensor

    q = torch.randn(1, 2, 32, 8, device=device, dtype=dtype)

    def fn():
        if isinstance(q, FakeTensor):
            raise RuntimeError("data-dependent shape")
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    return Step(fn)


def test_sdpa_backend_comes_from_the_first_real_call():
    from profiler.cell import measure_cell

    cell = Cell(label="s", mixer="dummy", overrides={}, config={}, scope="mixer", mode="forward", T=32, batch=1,
                dim=16, heads=2, depth=None, dtype="fp32", device="cpu")
    result = measure_cell(cell, {"builder": f"{HERE}:build_sdpa_not_fake", "track_tensors": False, "threads": 1,
                                 "time_budget_s": 0.02})
    assert result["status"] == "ok" and "_predict_error" in result
    assert result["sdpa_backend"] == "flash_cpu"


# --------------------------------------------------------------------------- the report reads what the core writes
def test_report_reads_killed_cells_and_shows_padding_in_headings(tmp_path):
    from reports import read_profile
    from reports.metrics import failure_text, group_cells, group_title
    from reports.synthetic import write_jsonl

    base = {"kind": "cell", "schema": 1, "run_id": "r", "mixer": "ponet", "label": "ponet", "scope": "mixer",
            "mode": "forward", "batch": 1, "dim": 16, "heads": 2, "depth": None, "dtype": "fp32", "device": "cpu",
            "causal": False}
    rows = [{"kind": "header", "schema": 1, "run_id": "r", "env": {}},
            {**base, "key": "a", "T": 64, "status": "killed", "reason": "killed by SIGKILL without a result",
             "signal": "SIGKILL", "rss_peak_bytes": 2**30},
            {**base, "key": "b", "T": 64, "status": "ok", "time_median_s": 0.1, "pad_fraction": 0.25},
            {**base, "key": "c", "T": 128, "status": "ok", "time_median_s": 0.2}]  # an older record: no field
    cells = read_profile(write_jsonl(tmp_path / "p.jsonl", rows)).cells
    assert list(cells["status"]) == ["killed", "ok", "ok"] and list(cells["pad_fraction"]) == [0.0, 0.25, 0.0]
    assert failure_text(cells.iloc[0]) == "killed"
    titles = sorted(group_title(g) for g, _ in group_cells(cells))
    assert len(titles) == 2 and any("last 25% padded (masked)" in t for t in titles)
    assert not any("padded" in t for t in titles if "25%" not in t)


# --------------------------------------------------------------------------- torch.compile
def test_compiled_cells_record_compile_time_apart(tmp_path):
    from profiler.records import read_records
    from profiler.sweep import run_profile

    out = tmp_path / "c.jsonl"
    run_profile(mixers="softmax", lengths="32", modes="forward,train", dim=16, heads=2, device="cpu",
                compile="aot_eager", out=out, isolate=False, time_budget=0.02, threads=1, progress=False)
    cells = [r for r in read_records(out) if r["kind"] == "cell"]
    assert [c["status"] for c in cells] == ["ok", "ok"], [c["reason"] for c in cells]
    for c in cells:
        assert c["compile"] == "aot_eager" and c["compile_s"] > 0 and c["recompiles"] == 0
        assert c["flops_counted"] > 0 and c["mem_predicted_bytes"] > 0  # from the eager step's fake pass
    with pytest.raises(ZooValueError, match="compile: expected a torch.compile backend"):
        plan_profile(mixers="softmax", lengths="16", compile="turbo", device="cpu", out="x.jsonl")


def build_growing_input(cell: Cell, device, dtype) -> Step:
    """A compiled step whose input changes shape on every call: dynamo recompiles."""
    from profiler.builders import compiled

    sizes = iter(range(4, 10_000))
    fn = compiled(lambda x: (x * 2).sum(), cell)
    return Step(lambda: fn(torch.ones(next(sizes))))


def test_recompilation_during_timing_is_recorded():
    import torch._dynamo

    from profiler.cell import measure_cell

    torch._dynamo.reset()
    cell = Cell(label="g", mixer="dummy", overrides={}, config={}, scope="mixer", mode="forward", T=8, batch=1, dim=8,
                heads=1, depth=None, dtype="fp32", device="cpu", compile="eager")
    result = measure_cell(cell, {"builder": f"{HERE}:build_growing_input", "predict": False, "threads": 1,
                                 "time_budget_s": 0.02})
    assert result["status"] == "ok" and result["recompiles"] >= 1

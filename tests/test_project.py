"""zoo project: the projection on a step whose memory and FLOPs are known in closed form, the
closed-form fit, the device table loader and its bad inputs, the report's projected tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.builders import Step
from profiler.cases import Cell
from profiler.devices import get_device, load_devices
from profiler.project import fit_at as _fit, project_series
from reports.projection import calibration_rows, crossovers, largest_fitting
from zoo.errors import ZooValueError

ROOT = Path(__file__).resolve().parent.parent
D = 64


def build_scores(cell: Cell, device, dtype) -> Step:
    """x (T, D) -> softmax(x x^T) x: live peak = the T x T scores twice (scores, softmax) plus
    the output; FLOPs = 2 T^2 D (x x^T) + 2 T^2 D (p x)."""
    x = torch.randn(cell.T, D, dtype=dtype, device=device)

    def fn():
        s = x @ x.T
        p = s.softmax(-1)
        return p @ x

    return Step(fn=fn)


def cell(T: int) -> Cell:
    return Cell(label="scores", mixer="scores", overrides={}, config={}, scope="mixer", mode="forward", T=T, batch=1,
                dim=D, heads=1, depth=None, dtype="fp32", device="cpu")


def test_projection_matches_closed_form_at_1m_tokens():
    dev = get_device("h100")
    T = 2**20
    (res,) = project_series([cell(T)], dev, builder=build_scores)
    assert res["method"] == "fake"
    assert res["mem_peak_bytes"] == 2 * T * T * 4 + T * D * 4  # fake tensors: nothing allocated
    assert res["flops"] == 4 * T * T * D
    assert res["time_s"] >= res["flops"] / dev.peak_flops("fp32")


def test_fit_is_exact_for_a_power_law():
    pts = [(T, {q: 5 + 3 * T ** 2 for q in ("mem_peak_bytes", "mem_abs_peak_bytes", "flops", "bytes_moved",
                                            "time_s", "ops")}) for T in (1024, 2048, 4096)]
    out = _fit(pts, 2**20)
    assert out["flops"] == pytest.approx(5 + 3 * 2**40, rel=1e-9)


def test_slow_fake_pass_switches_to_fit():
    results = project_series([cell(T) for T in (64, 128, 256, 512)], get_device("h100"), builder=build_scores,
                             slow_s=0.0)
    assert [r["method"] for r in results] == ["fake", "fake", "fake", "fit"]
    # T^2 + T is not one power law: the a + b T^k fit is a few per cent low here
    assert results[3]["mem_peak_bytes"] == pytest.approx(2 * 512 * 512 * 4 + 512 * D * 4, rel=0.05)


@pytest.mark.parametrize("mixer, mode", [("deltanet", "forward"), ("gla", "train")])
def test_chunk_loop_extrapolation_equals_a_direct_fake_pass(mixer, mode):
    """A chunked mixer dispatches ops in proportion to T: its series is the quadratic through
    T0/8..T0/2 checked at T0, and at a longer T that equals a direct fake pass (memory, FLOPs,
    ops exactly; bytes and time up to rounding: gla's training step has a T^2 bytes term)."""
    import dataclasses

    from profiler.project import fake_costs
    from profiler.project_run import _planned

    dev = get_device("h100")
    cells = _planned(mixer, "1024,1536,2048,4096", mode, None, 1, 64, 2, None, "fp32")
    results = project_series(cells, dev)
    assert [r["method"] for r in results] == ["fake", "fit", "fit", "fit"]
    assert results[-1]["fit_lengths"] == [128, 256, 512] and results[-1]["validated_at"] == 1024
    assert "from fake passes at T=128,256,512" in results[-1]["projected_by"]
    direct = fake_costs(dataclasses.replace(cells[-1], T=4096), dev)
    for q in ("mem_peak_bytes", "mem_abs_peak_bytes", "ops"):
        assert results[-1][q] == direct[q], q
    for q in ("flops", "bytes_moved", "time_s"):
        assert results[-1][q] == pytest.approx(direct[q], rel=1e-9), q


def test_device_table_builtin_and_user_file(tmp_path):
    table = load_devices()
    assert {"a100", "h100", "h200", "l4"} <= set(table)
    assert table["h200"].bandwidth_bytes_per_s > table["h100"].bandwidth_bytes_per_s
    f = tmp_path / "mine.toml"
    f.write_text('[MyGPU]\nmemory_bytes = 48e9\nbandwidth_bytes_per_s = 864e9\nflops_per_s = { bf16 = 181e12 }\n')
    dev = get_device("mygpu", f)
    assert dev.peak_flops("bf16") == 181e12
    with pytest.raises(ZooValueError, match="device 'mygpu' has no peak FLOP/s for fp32"):
        dev.peak_flops("fp32")


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "[x\n", "not valid TOML"),
    ("neg.json", '{"x": {"memory_bytes": -1, "bandwidth_bytes_per_s": 1, "flops_per_s": {"fp32": 1}}}',
     "x: memory_bytes: expected a positive number, got -1"),
    ("miss.json", '{"x": {"memory_bytes": 1, "flops_per_s": {"fp32": 1}}}', "x: missing field 'bandwidth_bytes_per_s'"),
    ("dtype.json", '{"x": {"memory_bytes": 1, "bandwidth_bytes_per_s": 1, "flops_per_s": {"int8": 1}}}',
     "unknown dtype 'int8'"),
    ("typo.json", '{"x": {"memory_bytes": 1, "bandwidth": 1}}', "unknown field 'bandwidth'"),
    ("fft.json", '{"x": {"memory_bytes": 1, "bandwidth_bytes_per_s": 1, "flops_per_s": {"fp32": 1}, "fft_flops_per_s": "fast"}}',
     "x: fft_flops_per_s: expected a positive number, got 'fast'"),
    ("table.yaml", "x: 1", "expected a .toml or .json file"),
])
def test_device_file_bad_inputs(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ZooValueError, match=message):
        load_devices(f)


def test_fft_ops_run_at_the_devices_fft_rate(tmp_path):
    """A device with ``fft_flops_per_s`` charges FFT ops at that rate (the CPU's is measured:
    FFTs run far below the GEMM peak there); others at the dtype's peak."""
    from profiler.project import fake_costs

    def build_fft(c, device, dtype):
        x = torch.randn(c.T, D, dtype=dtype, device=device)
        return Step(fn=lambda: torch.fft.rfft2(x))

    f = tmp_path / "d.json"
    base = '"memory_bytes": 1e9, "bandwidth_bytes_per_s": 1e15, "flops_per_s": {"fp32": 1e12}'
    f.write_text('{"fast": {%s}, "slow": {%s, "fft_flops_per_s": 1e9}}' % (base, base))
    fast, slow = (fake_costs(cell(4096), get_device(k, f), build_fft) for k in ("fast", "slow"))
    assert fast["flops"] == slow["flops"] > 0
    assert slow["time_s"] == pytest.approx(slow["flops"] / 1e9, rel=1e-3)
    assert fast["time_s"] == pytest.approx(fast["flops"] / 1e12, rel=1e-3)
    assert get_device("slow", f).as_dict()["fft_flops_per_s"] == 1e9


def test_unknown_device():
    with pytest.raises(ZooValueError, match="device: expected cpu or one of a100, h100, h200, l4"):
        get_device("tpu")


def rec(label, T, time_s, mem, fits=True):
    return {"kind": "projection", "label": label, "mode": "forward", "T": T, "status": "ok", "time_s": time_s,
            "mem_abs_peak_bytes": mem, "fits": fits, "key": f"{label}{T}", "scope": "mixer", "mem_peak_bytes": mem}


def test_largest_fitting_and_crossover():
    recs = [rec("softmax", 1024, 1.0, 1, True), rec("softmax", 4096, 16.0, 2, False),
            rec("lin", 1024, 2.0, 1, True), rec("lin", 4096, 8.0, 1, True)]
    rows = {r["label"]: r for r in largest_fitting(recs)}
    assert rows["softmax"]["largest_T"] == 1024 and rows["softmax"]["first_over_T"] == 4096
    (x,) = crossovers(recs)
    assert x["label"] == "lin" and x["crossover_T"] == 2048  # ratio 2 -> 0.5: geometric midpoint


def test_calibration_rows_compare_the_same_cells():
    proj = [rec("softmax", 1024, 1.0, 100), rec("lin", 1024, 3.0, 105)]
    meas = [{**r, "kind": "cell", "time_median_s": t, "mem_peak_bytes": 100} for r, t in zip(proj, (2.0, 4.0))]
    rows = {r["label"]: r for r in calibration_rows(proj, meas)}
    assert rows["lin"]["mem_error"] == pytest.approx(0.05)
    assert rows["lin"]["ratio_measured"] == 2.0 and rows["lin"]["ratio_projected"] == 3.0
    assert rows["lin"]["ratio_factor"] == pytest.approx(1.5)


def test_cli_project_and_its_errors(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "cli.py", "project", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    out = tmp_path / "p.jsonl"
    r = cli("--mixers", "softmax,ponet", "--lengths", "1k,1m", "--mode", "forward", "--device", "h200", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Projected (not measured)" in r.stdout and "ponet" in r.stdout
    import json

    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs[0]["kind"] == "header" and all(x["projected"] for x in recs)
    assert {x["kind"] for x in recs[1:]} == {"projection"} and len(recs) == 5
    for args, msg in ((("--device", "tpu"), "device: expected cpu or one of"),
                      (("--devices-file", str(tmp_path / "none.toml")), "devices file: expected a readable"),
                      (("--mixers", "softmax", "--lengths", "1k", "--out", str(out)), "already holds records")):
        r = cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def _synthetic(loop: bool, calls: list[int]):
    """A fake-pass stand-in: memory and FLOPs affine in T; a loop over 64-token chunks (ops grow
    with T) with bytes and time quadratic in T, or no loop with bytes and time a + b T^2."""
    def costs(c, device, builder):
        calls.append(c.T)
        T = c.T
        values = {"mem_peak_bytes": 1000 + 48 * T, "mem_abs_peak_bytes": 2000 + 48 * T, "flops": 7.0 * T + 3,
                  "bytes_moved": 0.25 * T * T + (5.0 * T if loop else 100.0),
                  "time_s": 1e-9 * T * T + (1e-6 * T if loop else 1e-3),
                  "ops": 40 + (T // 64 if loop else 0), "bound": "memory"}
        return values
    return costs


@pytest.mark.parametrize("loop, passes", [(True, [1024, 512, 128, 256]), (False, [1024, 512, 2048, 2**20])])
def test_series_plan_passes_and_exactness(loop, passes):
    from profiler import project_series as plan

    calls: list[int] = []
    cells = [cell(2**k) for k in range(10, 21)]  # 1k..1M
    out = plan.project_series(cells, get_device("h100"), None, costs=_synthetic(loop, calls),
                              real_points=None, data_dependent=lambda e: False)
    assert calls == passes  # each pass once; nothing near 1M for a loop
    top = out[-1]
    assert top["mem_peak_bytes"] == 1000 + 48 * 2**20 and top["flops"] == pytest.approx(7.0 * 2**20 + 3, rel=1e-12)
    if loop:  # the quadratic is exact for the T^2 bytes too
        assert top["method"] == "fit" and top["fit_form"] == "a + b T + c T^2"
        assert top["bytes_moved"] == pytest.approx(5.0 * 2**20 + 0.25 * 2**40, rel=1e-9)
    else:
        assert top["method"] == "fake" and out[5]["method"] == "fit" and out[5]["validated_at"] == 2**20


def test_a_loop_whose_quadratic_fails_pays_for_no_pass_it_cannot_use():
    """A loop series (ops grow with T) whose memory changes regime between T0/8 and T0: the plan
    falls to the sequential rule, without first buying passes at T0, T1, T2 to check a fit at the
    longest length, which a loop makes too costly to pass (mamba2 and retnet forward paid a 3.6 s pass each)."""
    from profiler import project_series as plan

    calls: list[int] = []

    def costs(c, device, builder):
        calls.append(c.T)
        T = c.T
        return {"mem_peak_bytes": max(40_000 + 8 * T, 48 * T), "mem_abs_peak_bytes": 2000 + 48 * T,
                "flops": 7.0 * T, "bytes_moved": 5.0 * T, "time_s": 1e-6 * T, "ops": 40 + T // 2, "bound": "memory"}

    cells = [cell(2**k) for k in range(10, 21)]  # 1k..1M
    out = plan.project_series(cells, get_device("h100"), None, costs=costs, real_points=None,
                              data_dependent=lambda e: False)
    # T0 and T0/2, T0/8, T0/4 (the loop check fails at T0), then passes while predicted under SLOW_FAKE_S
    assert calls == [1024, 512, 128, 256, 2048]
    assert [r["method"] for r in out[:3]] == ["fake", "fake", "fit"] and out[2]["fit_lengths"] == [512, 1024, 2048]


def test_metadata_ops_move_no_bytes():
    """``x.device`` in a Python loop is a dispatched ``prim.device`` op: no kernel, no bytes."""
    from profiler.project import fake_costs

    def builder(loops):
        def build(c, device, dtype):
            x = torch.randn(c.T, D, dtype=dtype, device=device)

            def fn():
                for _ in range(loops):
                    assert x.device.type == "cpu"
                return x * 2

            return Step(fn=fn)
        return build

    dev = get_device("h100")
    a, b = (fake_costs(cell(4096), dev, builder(n)) for n in (1, 50))
    assert a["bytes_moved"] == b["bytes_moved"] == 2 * 4096 * D * 4 and a["ops"] == b["ops"] == 1


@pytest.mark.parametrize("loop", [True, False])
def test_series_plan_does_not_depend_on_the_machines_clock(loop, monkeypatch):
    """Which lengths get a fake pass (and so every projected figure) must be the same on a fast,
    a slow or a busy machine: the plan predicts a pass's cost from its op count, not a stopwatch."""
    from profiler import project_series as plan

    cells = [cell(2**k) for k in range(10, 21)]  # 1k..1M

    def run(tick: float):
        clock = iter(range(10**6))
        monkeypatch.setattr(plan.time, "perf_counter", lambda: next(clock) * tick)
        calls: list[int] = []
        out = plan.project_series(cells, get_device("h100"), None, costs=_synthetic(loop, calls),
                                  real_points=None, data_dependent=lambda e: False)
        return calls, [{k: v for k, v in r.items() if k != "fake_s"} for r in out]

    assert run(1e-6) == run(10.0)  # every pass "took" a microsecond, or ten seconds

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
    ("table.yaml", "x: 1", "expected a .toml or .json file"),
])
def test_device_file_bad_inputs(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ZooValueError, match=message):
        load_devices(f)


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

"""``zoo profile --mode decode``: planning, records, fits, the terminal table and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from profiler.cases import parse_modes
from profiler.settings import plan_profile
from profiler.sweep import run_sweep
from zoo import ZooError


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_parse_modes_accepts_decode_and_names_it_in_errors():
    assert parse_modes("decode") == ("decode",)
    assert parse_modes("forward,decode") == ("forward", "decode")
    with pytest.raises(ZooError, match="mode: expected forward, train, both or decode, got 'decodee'"):
        parse_modes("decodee")


def test_decode_cells_are_causal_and_unsupported_without_a_state(tmp_path):
    cells, settings = plan_profile(mixers="softmax,fnet", lengths="64,128", modes="decode,forward",
                                   dim=16, heads=2, out=tmp_path / "p.jsonl")
    decode = {(c.label, c.T): c for c in cells if c.mode == "decode"}
    assert all(c.causal for c in decode.values())
    assert decode[("softmax", 64)].unsupported is None
    assert "no causal variant" in decode[("fnet", 64)].unsupported
    forward = [c for c in cells if c.mode == "forward"]
    assert not any(c.causal or c.unsupported for c in forward)  # other modes untouched
    assert settings.declared["softmax"]["decode_time"] == 1.0
    assert settings.declared["softmax"]["decode_state"] == 1.0


@pytest.fixture(scope="module")
def decode_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("decode") / "d.jsonl"
    cells, settings = plan_profile(mixers="softmax,transnormer,ponet", lengths="32,64,128", modes="decode",
                                   dim=16, heads=2, out=out, isolate=False, threads=1, time_budget=0.05)
    run_sweep(cells, settings)
    return out


def test_decode_sweep_records_and_fits(decode_run):
    recs = _records(decode_run)
    cell = {(r["label"], r["T"]): r for r in recs if r["kind"] == "cell"}
    for T in (32, 64, 128):
        soft, lin = cell[("softmax", T)], cell[("transnormer", T)]
        assert soft["status"] == lin["status"] == "ok", (soft["reason"], lin["reason"])
        assert soft["mode"] == "decode" and soft["causal"] is True
        assert soft["state_class"] == "O(T)" and lin["state_class"] == "O(1)"
        assert soft["time_median_s"] > 0 and soft["prefill_s"] > 0 and soft["context"] == T + 1
        assert cell[("ponet", T)]["status"] == "unsupported"
    # a KV cache grows with T, a recurrent state does not
    assert cell[("softmax", 32)]["state_bytes"] < cell[("softmax", 64)]["state_bytes"] < cell[("softmax", 128)]["state_bytes"]
    assert len({cell[("transnormer", T)]["state_bytes"] for T in (32, 64, 128)}) == 1
    fits = {(r["label"], r["metric"]): r for r in recs if r["kind"] == "fit"}
    assert fits[("softmax", "state")]["declared"] == 1.0
    assert fits[("softmax", "state")]["k"] == pytest.approx(1.0, abs=0.05)
    assert fits[("transnormer", "state")]["declared"] == 0.0
    assert fits[("transnormer", "state")]["k"] == pytest.approx(0.0, abs=1e-9)
    assert fits[("transnormer", "time")]["declared"] == 0.0  # per-token time follows the state, not spec.time


def test_cli_profile_decode_bad_mode_is_one_line(tmp_path):
    from cli import app

    res = CliRunner().invoke(app, ["profile", "--mode", "generate", "--mixers", "softmax", "--lengths", "64",
                                   "--out", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 2
    assert "mode: expected forward, train, both or decode, got 'generate'" in res.output


def test_report_generation_section(decode_run, tmp_path):
    from reports.render import build_report

    report = build_report([decode_run], tmp_path / "rep", formats="md")
    md = report.files["md"].read_text()
    section = md[md.index("## Generation"):]
    assert "| mixer | state | T=32 | T=64 | T=128 | k ms/token | k state | faster than softmax from | less state than softmax from |" in section
    row = next(line for line in section.splitlines() if line.startswith("| transnormer |"))
    assert "| O(1) |" in row and "| 0.00 |" in row  # constant state: k = 0
    assert "cheaper at every measured length" in row  # less state than the KV cache at every T
    assert next(line for line in section.splitlines() if line.startswith("| ponet |")).count("n/a") == 3
    assert any(p.name.startswith("generation-") for p in report.figures)


def test_report_without_decode_cells_has_no_generation_section():
    import pandas as pd

    from reports.generation import generation_tables

    assert generation_tables(pd.DataFrame({"mode": ["forward"], "label": ["softmax"], "T": [64]})) == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--mixers", "ponnet"], "error: mixer: unknown name 'ponnet'"),
        (["--lengths", "1k..x"], "error: lengths: expected a length like 512"),
        (["--time-budget", "0"], "error: time budget: expected a positive number"),
    ],
)
def test_bench_decode_bad_input_is_one_line(args, expected):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "benchmarks/bench_decode.py", *args], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def _decode_record(label, T, seconds, state_bytes, state_class):
    return {"kind": "cell", "mode": "decode", "label": label, "T": T, "status": "ok", "time_median_s": seconds,
            "time_samples": None, "state_bytes": state_bytes, "state_class": state_class}


def test_bench_decode_targets_pass_and_fail():
    from benchmarks.bench_decode import check_range_targets, targets_from_records

    Ts = [1024 * 2**i for i in range(7)]
    good = [_decode_record("softmax", T, 1e-4 + 2e-7 * T, 1024 * T, "O(T)") for T in Ts]  # overhead + cache
    good += [_decode_record("transnormer", T, 1e-4 * (1.01 if i % 2 else 1.0), 8192, "O(1)") for i, T in enumerate(Ts)]
    assert check_range_targets(targets_from_records(good)) == 0
    # a "constant-state" mixer that secretly recomputes the prefix: time and state grow with T
    bad = good[:7] + [_decode_record("transnormer", T, 1e-4 + 1e-9 * T, 8192 + T, "O(1)") for T in Ts]
    got = {what: value for what, value, *_ in targets_from_records(bad)}
    assert got["transnormer [O(1)] ms/token T=65536 / T=1024"] > 1.2
    assert got["transnormer [O(1)] state bytes max/min over T"] > 1.0
    assert check_range_targets(targets_from_records(bad)) == 1


@pytest.mark.parametrize("extra, got", [({"scope": "model"}, "--scope model"), ({"compile": True}, "--compile inductor")])
def test_decode_refuses_model_scope_and_compile(tmp_path, extra, got):
    with pytest.raises(ZooError, match=f"mode: decode runs the mixer's state API eagerly in mixer scope, got {got}"):
        plan_profile(mixers="softmax", lengths="64", modes="decode", out=tmp_path / "p.jsonl", **extra)


@pytest.mark.parametrize("budget, long_prompt", [(1e-5, True), (0.2, False)])
def test_a_long_prefill_is_timed_once_and_generation_continues_its_set_up_state(budget, long_prompt):
    """A prompt whose set-up call alone takes half the budget is timed once more, without warm-up
    (at 64k tokens a softmax prefill is ~45 s on one core); a short one gets the usual samples."""
    from profiler.cases import Cell
    from profiler.cell import measure_cell

    cell = Cell(label="softmax", mixer="softmax", overrides={}, config={}, scope="mixer", mode="decode", T=64,
                batch=1, dim=16, heads=2, depth=None, dtype="fp32", device="cpu", causal=True)
    result = measure_cell(cell, {"threads": 1, "time_budget_s": budget})
    assert result["status"] == "ok", result.get("reason")
    assert (len(result["prefill_samples"]) == 1) is long_prompt
    assert result["context"] == 65 and result["state_bytes"] > 0 and result["time_n"] >= 3

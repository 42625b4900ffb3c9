"""reports/: loading records, the consumption table, exponent fits, crossovers, figures and the
rendered report folder, all from synthetic records (no torch in the reports package)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import ReportError, build_report, consumption_tables, read_profile, to_html, to_latex, to_markdown
from reports.fit import find_crossover, fit_scaling, local_slopes
from reports.metrics import PALETTE, mixer_color
from reports.synthetic import synthetic_records, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = [512, 1024, 2048, 4096, 8192]
# softmax (quadratic) runs out of memory above ~2 GiB in these records: an observed OOM at 8192
MIXERS = {
    "softmax": (2.0, 2.0, 4e-9, 48.0),
    "ponet": (1.0, 1.0, 4e-5, 9000.0),
    "fnet": (1.05, 1.0, 1.5e-5, 5000.0),
}


def _write(path: Path, records: list[dict]) -> Path:
    return write_jsonl(path, records)


def _cell(label: str, T: int, status: str = "ok", time: float | None = 1.0, mem: float | None = 1e6, **kw) -> dict:
    rec = {"kind": "cell", "schema": 1, "run_id": "r", "key": f"{label}-{T}", "mixer": label.split("[")[0],
           "label": label, "scope": "mixer", "mode": "forward", "T": T, "batch": 1, "dim": 16, "heads": 2,
           "dtype": "fp32", "device": "cpu", "causal": False, "status": status, "reason": kw.pop("reason", None),
           "inferred": kw.pop("inferred", False)}
    if status == "ok":
        rec.update(time_median_s=time, steps_per_s=1 / time, mem_peak_bytes=mem)
    rec.update(kw)
    return rec


def _cells(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records).pipe(_with_columns)


def _with_columns(frame: pd.DataFrame) -> pd.DataFrame:
    from reports.load import CELL_COLUMNS

    for column in CELL_COLUMNS + ["env_id"]:
        if column not in frame.columns:
            frame[column] = None
    return frame


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "cpu.jsonl"
    return _write(path, synthetic_records(MIXERS, LENGTHS, budget_bytes=2.0**31, fidelity=False))


@pytest.fixture(scope="module")
def fidelity_path(tmp_path_factory) -> Path:
    """Fidelity records in a file of their own, as `zoo fidelity --out` writes them."""
    records = [r for r in synthetic_records(MIXERS, LENGTHS, run_id="f") if r["kind"] != "cell"]
    return _write(tmp_path_factory.mktemp("runs") / "fidelity.jsonl", records)


@pytest.fixture(scope="module")
def report(profile_path, fidelity_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report([profile_path, fidelity_path], out, formats="html,md,tex",
                        declared={"softmax": {"time": 2.0, "memory": 1.0}, "ponet": {"time": 1.0, "memory": 1.0}})


# --- the package boundary -----------------------------------------------------------------------
def test_reports_imports_neither_torch_nor_zoo():
    code = ("import sys, reports, reports.render, reports.plots, reports.synthetic; "
            "bad = [m for m in ('torch', 'zoo', 'profiler') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- loading ------------------------------------------------------------------------------------
def test_corrupted_and_partial_lines_are_skipped_and_counted(profile_path, tmp_path):
    path = tmp_path / "damaged.jsonl"
    lines = profile_path.read_text().splitlines()
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"kind": "cell", "schema": 1}))  # a cell missing its required keys
    lines.append(lines[-1][: len(lines[-1]) // 2])  # an interrupted last write
    path.write_text("\n".join(lines))
    profile = read_profile(path)
    assert profile.bad_lines == [4, 6, len(lines)]
    assert len(profile.cells) == len(MIXERS) * len(LENGTHS)


def test_resumed_cells_keep_the_last_record(tmp_path):
    first = _cell("softmax", 512, status="timeout", reason="over 60 s")
    again = _cell("softmax", 512, time=0.5)
    profile = read_profile(_write(tmp_path / "r.jsonl", [first, again, {"kind": "capability", "schema": 1}]))
    assert profile.superseded == 1 and profile.ignored == 1
    assert profile.cells["status"].tolist() == ["ok"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("", "not a zoo profile"),
        ("T,time\n512,0.1\n", "not a zoo profile"),
        ('[{"kind": "cell"}]\n', "not a zoo profile"),
        ('{"kind": "header", "schema": 2}\n{"kind": "cell", "schema": 2}\n', "unknown record schema: schema 2 (2 records)"),
    ],
)
def test_unreadable_inputs_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=re.escape(message)) as info:
        read_profile(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_directory_is_not_a_profile(tmp_path):
    with pytest.raises(ReportError, match="is a directory"):
        read_profile(tmp_path)


# --- the consumption table ----------------------------------------------------------------------
def _table(records, baseline="softmax"):
    tables = consumption_tables(_cells(records), baseline)
    assert len(tables) == 1
    return tables[0]


def test_oom_cells_and_no_ratio_where_the_baseline_is_oom():
    records = [
        _cell("softmax", 512, time=1.0, mem=100.0),
        _cell("softmax", 1024, status="oom", reason="CUDA out of memory"),
        _cell("softmax", 2048, status="skipped", reason="after OOM at T=1024", inferred=True),
        _cell("ponet", 512, time=0.5, mem=50.0),
        _cell("ponet", 1024, time=1.0, mem=100.0),
        _cell("ponet", 2048, time=2.0, mem=200.0),
    ]
    table = _table(records)
    assert table.baseline == "softmax" and table.labels[0] == "softmax"
    assert table.entry(0, "softmax", 1024).text == "OOM"
    assert table.entry(0, "softmax", 2048).text == "OOM†"  # inferred, not run
    assert table.entry(0, "ponet", 512).ratio == pytest.approx(0.5)
    assert table.entry(1, "ponet", 512).ratio == pytest.approx(0.5)
    assert table.entry(0, "ponet", 1024).ratio is None  # the baseline has no number there
    assert table.entry(0, "softmax", 512).ratio is None  # the baseline carries no ratio
    md = to_markdown(table)
    assert "| softmax | " in md and "OOM†" in md and "(0.5×)" in md and "OOM† " not in md.split("(0.5×)")[0][-5:]
    assert "1,024" not in md and "| 512 | 1024 | 2048 |" in md
    html = to_html(table)
    assert 'class="num oom"' in html and "(0.5×)" in html
    latex = to_latex(table)
    assert r"\multicolumn{3}{c}{Time per forward call (s)}" in latex and r"OOM$^\dagger$" in latex


def test_noisy_timings_are_marked_but_ranked_as_printed():
    records = [_cell("softmax", 512, time=2.0, noisy=True), _cell("ponet", 512, time=1.0),
               _cell("fnet", 512, time=1.5, noisy=True)]
    table = _table(records)
    md = to_markdown(table)
    assert "| softmax | ~2.00 |" in md and "**1.00**" in md and "<u>~1.50</u>" in md
    assert any(note.startswith("~: a noisy timing") for note in table.notes)
    assert table.entry(1, "softmax", 512).noisy is False  # memory is one reading, never "noisy"


def test_missing_baseline_gives_no_ratios_and_says_so():
    records = [_cell("ponet", 512, time=0.5), _cell("fnet", 512, time=0.25)]
    table = _table(records, baseline="softmax")
    assert table.baseline is None
    assert all(table.entry(b, label, 512).ratio is None for b in (0, 1) for label in table.labels)
    assert any("Baseline 'softmax' is not in this table" in note for note in table.notes)


def test_ties_share_best_and_the_next_value_is_underlined():
    records = [
        _cell("softmax", 512, time=2.0, mem=300.0),
        _cell("ponet", 512, time=1.0, mem=100.0),
        _cell("fnet", 512, time=1.0, mem=200.0),
        _cell("performer", 512, time=1.5, mem=100.0),
    ]
    table = _table(records)
    marks = {label: table.entry(0, label, 512).mark for label in table.labels}
    assert marks == {"softmax": "", "ponet": "best", "fnet": "best", "performer": "second"}
    mem = {label: table.entry(1, label, 512).mark for label in table.labels}
    assert mem == {"softmax": "", "ponet": "best", "fnet": "second", "performer": "best"}
    md = to_markdown(table)
    assert md.count("**1.00**") == 2 and "<u>1.50</u>" in md
    assert r"\textbf{1.00}" in to_latex(table) and "<u>1.50</u>" in to_html(table)


def test_model_scope_reports_steps_per_second_where_higher_is_better():
    records = [_cell("softmax", 512, time=0.1, scope="model", mode="train"),
               _cell("ponet", 512, time=0.05, scope="model", mode="train")]
    table = _table(records)
    assert table.blocks[0].title == "Training speed (steps/s)"
    assert table.entry(0, "ponet", 512).text == "20.0" and table.entry(0, "ponet", 512).mark == "best"
    assert table.entry(0, "ponet", 512).ratio == pytest.approx(2.0)  # a speed-up


def test_baseline_by_mixer_name_finds_its_only_variant():
    records = [_cell("softmax[impl=eager]", 512, time=2.0), _cell("ponet", 512, time=1.0)]
    table = _table(records, baseline="softmax")
    assert table.baseline == "softmax[impl=eager]"
    assert table.entry(0, "ponet", 512).ratio == pytest.approx(0.5)


# --- fits and crossovers ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1.0, 1.5, 2.0])
def test_fit_recovers_the_exponent_of_a_power_law(k):
    T = np.array([256, 512, 1024, 2048, 4096, 8192], dtype=float)
    fit = fit_scaling(T, 3e-9 * T**k)
    assert fit.model == "a+bT^k"
    assert fit.k == pytest.approx(k, abs=0.002)
    # a fixed overhead that dominates the short lengths does not bias the exponent
    rng = np.random.default_rng(0)
    y = 2e-3 + 2e-3 * 20 * (T / T[-1]) ** k  # overhead = the T^k term at T / 20^(1/k)
    samples = [list(v * np.exp(rng.normal(0, 0.03, 15))) for v in y]
    fit = fit_scaling(T, [float(np.median(s)) for s in samples], samples)
    assert fit.k_lo <= k <= fit.k_hi and fit.k_hi - fit.k_lo < 0.6
    assert fit.k == pytest.approx(k, abs=0.15)


def test_fit_with_few_lengths_is_a_log_log_slope_and_needs_two_points():
    fit = fit_scaling([512, 1024, 2048], [1.0, 2.0, 4.0])
    assert fit.model == "power" and fit.k == pytest.approx(1.0, abs=1e-3)
    assert fit_scaling([512], [1.0]) is None
    assert fit_scaling([512, 1024], [1.0, float("nan")]) is None  # censored cells are not points


def test_local_slopes():
    mid, slope = local_slopes([1024, 256, 512], [16.0, 1.0, 4.0])
    np.testing.assert_allclose(mid, [math.sqrt(256 * 512), math.sqrt(512 * 1024)])
    np.testing.assert_allclose(slope, [2.0, 2.0])


def test_crossover_measured_extrapolated_and_none():
    T = [512, 1024, 2048, 4096]
    quad = [1e-6 * t**2 for t in T]
    cross = find_crossover(T, [1e-3 * t for t in T], quad)  # equal at T = 1000
    assert cross.kind == "measured" and cross.length == pytest.approx(1000, rel=1e-6)
    lin = [1e-2 * t for t in T]  # equal at T = 10000, beyond the measured range
    cross = find_crossover(T, lin, quad, fit_scaling(T, lin), fit_scaling(T, quad))
    assert cross.kind == "extrapolated" and cross.length == pytest.approx(1e4, rel=0.02)
    assert "extrapolated" in cross.text
    cross = find_crossover(T, quad, lin, fit_scaling(T, quad), fit_scaling(T, lin))
    assert cross.kind == "always" and "baseline cheaper again from T ≈ 9.77k" in cross.text
    steep = [100 * q for q in quad]
    cross = find_crossover(T, steep, lin, fit_scaling(T, steep), fit_scaling(T, lin))
    assert cross.kind == "none" and "do not cross" in cross.text
    cross = find_crossover(T, [0.5 * q for q in quad], quad)
    assert cross.kind == "always" and cross.text == "cheaper at every measured length (from T=512)"


def test_crossover_where_the_baseline_runs_out_of_memory():
    T = [512, 1024, 2048]
    cross = find_crossover(T, [2.0, 4.0, 8.0], [1.0, 3.0, math.inf])
    assert cross.kind == "measured" and (cross.lo, cross.hi) == (1024, 2048)
    assert "the baseline fails from 2k" in cross.text


# --- figures ------------------------------------------------------------------------------------
def test_scaling_plot_renders_with_units_oom_marker_and_mixer_colours(profile_path, fidelity_path):
    import matplotlib
    from matplotlib.colors import to_hex

    from reports.plots import plot_fidelity, plot_scaling

    profile = read_profile(profile_path)
    fig = plot_scaling(profile.cells, "memory", title="t")
    assert matplotlib.get_backend().lower() == "agg"
    ax, ax_slope = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "(MiB" in ax.get_ylabel() and "T" in ax_slope.get_xlabel() and "slope" in ax_slope.get_ylabel()
    colours = {to_hex(line.get_color()) for line in ax.get_lines() if line.get_marker() not in ("None", "x")}
    assert {mixer_color(m) for m in MIXERS} <= colours
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert [to_hex(line.get_color()) for line in crosses] == [mixer_color("softmax")]  # the first OOM
    assert len(fig.legends) == 1
    fig.canvas.draw()
    fig = plot_fidelity(read_profile(fidelity_path).fidelity)
    assert fig.axes[0].get_yscale() == "log"
    fig.canvas.draw()


def test_colour_comes_from_the_name_alone():
    assert mixer_color("softmax[impl=eager]") == mixer_color("softmax")
    assert mixer_color("ponet") in PALETTE


def test_registered_mixers_have_distinct_colours():
    from zoo import list_mixers

    names = list_mixers()
    assert len({mixer_color(n) for n in names}) == len(names), {n: mixer_color(n) for n in names}


# --- the report folder --------------------------------------------------------------------------
def test_report_folder_has_every_output(report):
    out = report.out_dir
    for name in ("report.html", "report.md", "summary.csv", "tables.tex"):
        assert (out / name).stat().st_size > 0, name
    pngs, svgs = sorted(out.glob("figures/*.png")), sorted(out.glob("figures/*.svg"))
    assert len(pngs) == len(svgs) == 5  # time, memory (each an overview and small multiples), fidelity
    assert sum(p.stem.endswith("-panels") for p in pngs) == 2
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(MIXERS) * len(LENGTHS)
    ponet = summary[(summary["label"] == "ponet") & (summary["T"] == 512)].iloc[0]
    soft = summary[(summary["label"] == "softmax") & (summary["T"] == 512)].iloc[0]
    assert ponet["time_ratio_to_baseline"] == pytest.approx(ponet["time_median_s"] / soft["time_median_s"])


def test_report_html_is_self_contained_with_every_section(report):
    html = (report.out_dir / "report.html").read_text()
    for section in ("Consumption", "Scaling", "Complexity: fitted exponents", "Crossovers against the baseline",
                    "Fidelity against exact softmax", "Fairness notes", "Environment", "Noisy or contended timings"):
        assert section in html, section
    assert html.count('src="data:image/png;base64,') == 5
    assert 'src="http' not in html and "<link" not in html
    assert 'class="num oom"' in html  # softmax's OOM cells


def test_report_markdown_flags_exponents_that_disagree_with_the_declared_class(report):
    md = (report.out_dir / "report.md").read_text()
    assert "![" in md and "figures/" in md
    softmax_row = next(line for line in md.splitlines() if line.startswith("| softmax | ") and "O(T" in line)
    # memory grows as T^2 (eager) but the spec declares O(T): flagged, with the gap
    assert "⚠" in softmax_row and "+1.00 vs O(T)" in softmax_row
    ponet_row = next(line for line in md.splitlines() if line.startswith("| ponet | ") and "O(T" in line)
    assert "⚠" not in ponet_row


def test_fairness_notes_show_the_cpu_heap(report):
    md = (report.out_dir / "report.md").read_text()
    fairness = md[md.index("Fairness notes"):md.index("Environment")]
    assert "CPU heap (memory / timing)" in fairness
    ponet_row = next(line for line in fairness.splitlines() if line.startswith("| ponet | "))
    assert ponet_row.rstrip(" |").endswith("tracking / caching")


def test_two_runs_side_by_side_with_ratios(profile_path, tmp_path):
    faster = synthetic_records(MIXERS, LENGTHS, budget_bytes=2.0**33, run_id="gpu", device_name="Fast GPU", seed=1)
    for rec in faster:
        if rec["kind"] == "cell" and rec["status"] == "ok":
            rec["time_median_s"] /= 4
            rec["time_samples"] = [s / 4 for s in rec["time_samples"]]
    other = _write(tmp_path / "gpu.jsonl", faster)
    out = build_report([profile_path, other], tmp_path / "both", formats="md")
    md = (out.out_dir / "report.md").read_text()
    assert "Side by side" in md and "gpu vs cpu" in md and "(0.25×)" in md
    assert "### Run cpu" in md and "### Run gpu" in md


def test_two_runs_without_common_cells_is_an_error(profile_path, tmp_path):
    other = synthetic_records({"ponet": MIXERS["ponet"]}, [100, 200], run_id="x")
    path = _write(tmp_path / "other.jsonl", other)
    with pytest.raises(ReportError, match="runs 'cpu' and 'other' have no common cells"):
        build_report([profile_path, path], tmp_path / "nope")


def test_a_fidelity_file_joins_a_profile_instead_of_being_a_run(report):
    md = (report.out_dir / "report.md").read_text()
    assert "Side by side" not in md and "### Run" not in md
    assert "| ponet | 0.05 ± 0.005 (cos 0.999)" in md and "| fnet | " in md


def test_report_renders_in_headless_chromium(report, tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        if os.environ.get("ZOO_REQUIRE_BROWSER"):  # CI sets it: a missing browser fails, never skips
            pytest.fail("chromium is not installed and ZOO_REQUIRE_BROWSER is set (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    shot = tmp_path / "screenshot.png"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_report_render.sh"), str(report.out_dir / "report.html"), str(shot)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHON": sys.executable},  # this interpreter, not a .venv a worktree may lack
    )
    assert result.returncode == 0, result.stdout + result.stderr
    n_images = sum(p.suffix == ".png" for p in report.figures)  # each figure is one <img> in the page
    assert shot.stat().st_size > 10_000 and f"{n_images} images, none broken" in result.stdout

"""The honest report (issues 10 and 14): no exponent from two lengths, no ⚠ on noisy or contended
timings, such cells left out of fits and crossovers and drawn distinctly, crossovers capped at 1M
tokens, and runs at different thread counts never mixed. Synthetic records only (no torch)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from reports import build_report, consumption_tables, read_profile, to_markdown
from reports.fit import find_crossover, fit_scaling
from reports.synthetic import synthetic_records, write_jsonl

MIXERS = {
    "softmax": (2.0, 2.0, 4e-9, 48.0),
    "ponet": (1.0, 1.0, 4e-5, 9000.0),
    "skeinformer": (1.0, 1.0, 6e-5, 10000.0),
}
LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]
DECLARED = {"softmax": {"time": 2.0, "memory": 2.0}, "ponet": {"time": 1.0, "memory": 1.0},
            "skeinformer": {"time": 1.0, "memory": 1.0}}


def _records(lengths=LENGTHS, run_id="r0", threads=None, **kw) -> list[dict]:
    records = synthetic_records(MIXERS, lengths, budget_bytes=2.0**40, run_id=run_id, fidelity=False, **kw)
    if threads is not None:
        for rec in records:
            if rec["kind"] == "cell":
                rec["threads"] = threads
                rec["key"] = f"{rec['key']}-t{threads}"
    return records


def _slow_down(records: list[dict], label: str, lengths: set[int], factor, **flags) -> list[dict]:
    """A busy machine: the cells of ``label`` at ``lengths`` are ``factor(T)`` times slower."""
    for rec in records:
        if rec["kind"] == "cell" and rec["label"] == label and rec["T"] in lengths and rec["status"] == "ok":
            f = factor(rec["T"])
            rec["time_median_s"] *= f
            rec["time_samples"] = [s * f for s in rec["time_samples"]]
            rec["steps_per_s"] = 1 / rec["time_median_s"]
            rec.update(flags)
    return records


def _report_md(tmp_path: Path, *files: list[dict]) -> str:
    paths = [write_jsonl(tmp_path / f"run{i}.jsonl", recs) for i, recs in enumerate(files)]
    report = build_report(paths, tmp_path / "out", formats="md", declared=DECLARED)
    return (report.out_dir / "report.md").read_text()


def _row(md: str, section: str, label: str) -> str:
    part = md[md.index(section):]
    return next(line for line in part.splitlines() if line.startswith(f"| {label} | "))


def test_two_lengths_give_no_exponent_and_no_flag(tmp_path):
    records = _records(lengths=[512, 1024])
    md = _report_md(tmp_path, records)
    row = _row(md, "Complexity", "skeinformer")
    rows = [line for line in md[md.index("Complexity"):md.index("Crossovers")].splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(MIXERS) and not any("⚠" in line for line in rows)
    assert "too few lengths (2 of 3 needed)" in row
    assert "no exponent is fitted or judged below 3 lengths" in md
    assert fit_scaling([512, 1024], [1.0, 4.0]) is None


def test_contended_timings_are_left_out_of_fits_and_crossovers_and_never_flag(tmp_path):
    # the machine got busy for skeinformer's two longest lengths: 8x slower there (the mixer is fine)
    records = _slow_down(_records(), "skeinformer", {8192, 16384}, lambda T: 8.0, contended=True,
                         contended_samples=12, other_cpu=1.6)
    # and the baseline looks 50x slower at 2k: no crossover may come from that cell
    records = _slow_down(records, "softmax", {2048}, lambda T: 50.0, contended=True)
    md = _report_md(tmp_path, records)
    assert "T ≈ 1." not in _row(md, "Crossovers against the baseline", "ponet")
    assert "(measured)" in _row(md, "Crossovers against the baseline", "ponet")
    row = _row(md, "Complexity", "skeinformer")
    assert "⚠" not in row and "left out (noisy or busy machine): 8k, 16k" in row
    k = float(row.split("|")[2].split()[0])
    assert k == pytest.approx(1.0, abs=0.1)  # fitted on the clean 512..4k only
    consumption = _row(md, "Consumption", "skeinformer")
    assert consumption.count("≈") == 2 and "≈: timed while other processes used the cores" in md
    unclean = md[md.index("Noisy or contended timings"):]
    assert "| skeinformer | forward | 8192 | contended |" in unclean and "1.60" in unclean


def test_a_fit_that_rests_on_noisy_timings_is_inconclusive_and_a_clean_one_is_flagged(tmp_path):
    # noisy from 2k on, and growing like T^3 there: too few clean lengths remain to fit on
    records = _slow_down(_records(), "skeinformer", {2048, 4096, 8192, 16384}, lambda T: (T / 1024) ** 2, noisy=True)
    # ponet truly quadratic on a quiet machine: that disagreement is flagged
    records = _slow_down(records, "ponet", set(LENGTHS), lambda T: T / 512)
    md = _report_md(tmp_path, records)
    row = _row(md, "Complexity", "ponet")
    assert "⚠" in row and "vs O(T)" in row
    row = _row(md, "Complexity", "skeinformer")
    assert "⚠" not in row and "inconclusive (data not clean)" in row and "| ~" in row
    assert "noisy or busy-machine timings included" in row
    # the crossover may not be extrapolated from that fit either
    cross = _row(md, "Crossovers against the baseline", "skeinformer")
    assert "extrapolated" not in cross


def test_crossover_beyond_1m_tokens_reads_none():
    T = [512, 1024, 2048, 4096]
    lin = [1e-2 * t for t in T]
    quad = [1e-12 * t**2 for t in T]  # the two cross near T = 1e10, far beyond the measured range
    cross = find_crossover(T, lin, quad, fit_scaling(T, lin), fit_scaling(T, quad))
    assert cross.kind == "none" and cross.text.startswith("none below 1M tokens")
    assert not re.search(r"\d{3,}M", cross.text) and "≈" not in cross.text
    near = [2e-7 * t**2 for t in T]  # crosses at 50k: still reported, with an interval
    cross = find_crossover(T, lin, near, fit_scaling(T, lin), fit_scaling(T, near))
    assert cross.kind == "extrapolated" and cross.length == pytest.approx(5e4, rel=0.05)


def test_runs_at_different_thread_counts_are_never_one_series(tmp_path):
    one = _records(run_id="a", threads=1)
    two = _records(run_id="b", threads=2)
    paths = [write_jsonl(tmp_path / "t1.jsonl", one), write_jsonl(tmp_path / "t2.jsonl", two)]
    report = build_report(paths, tmp_path / "out", formats="md", declared=DECLARED)
    md = (report.out_dir / "report.md").read_text()
    assert "timed at different thread counts (t1: 1 thread; t2: 2 threads)" in md
    assert any("different thread counts" in w for w in report.warnings)
    assert "t2 vs t1" not in md  # no side-by-side ratios between thread counts
    figures = sorted(p.name for p in report.figures if p.suffix == ".png" and p.name.startswith("scaling-time"))
    assert [n for n in figures if "-t1" in n] and [n for n in figures if "-t2" in n]
    assert not any("-t1" in n and "-t2" in n for n in figures)


def test_one_file_with_two_thread_counts_gives_two_groups(tmp_path):
    records = _records(run_id="a", threads=1) + [r for r in _records(run_id="b", threads=2) if r["kind"] == "cell"]
    cells = read_profile(write_jsonl(tmp_path / "mixed.jsonl", records)).cells
    tables = consumption_tables(cells, "softmax")
    assert len(tables) == 2 and {"1 thread" in t.title for t in tables} == {True, False}
    assert "2 threads" in to_markdown(tables[1]) or "2 threads" in to_markdown(tables[0])


def test_old_records_without_the_new_fields_load_and_count_as_clean(tmp_path):
    from reports.metrics import clean_mask

    cells = read_profile(write_jsonl(tmp_path / "old.jsonl", _records())).cells
    assert cells["contended"].isna().all()
    assert clean_mask(cells[cells["status"] == "ok"]).all()


def test_plots_draw_unclean_timings_hollow_and_small_multiples_per_mixer(tmp_path):
    from reports.plots import plot_scaling, plot_scaling_panels

    records = _slow_down(_records(), "skeinformer", {8192}, lambda T: 3.0, contended=True)
    cells = read_profile(write_jsonl(tmp_path / "p.jsonl", records)).cells
    fig = plot_scaling(cells, "time")
    hollow = [line for ax in fig.axes for line in ax.get_lines()
              if line.get_marker() not in ("None", None, "") and line.get_markerfacecolor() == "white"
              and len(line.get_xdata())]
    assert any(8192 in list(line.get_xdata()) for line in hollow)
    panels = plot_scaling_panels(cells, "time", reference="softmax")
    visible = [ax for ax in panels.axes if ax.get_visible() and ax.get_title(loc="left")]
    assert sorted(ax.get_title(loc="left") for ax in visible) == ["ponet", "skeinformer"]
    for ax in visible:  # softmax drawn as the reference in every panel
        assert any(np.allclose(line.get_xdata(), LENGTHS) for line in ax.get_lines()
                   if line.get_color() == "#9a9a9a")
    assert not math.isnan(float(cells["time_median_s"].max()))


def test_fit_series_and_verdict_rules():
    from reports.fit import fit_series, judge_exponent

    T = [512, 1024, 2048, 4096, 8192]
    y = [1e-6 * t for t in T]
    busy = [v * (8 if t >= 4096 else 1) for v, t in zip(y, T)]
    clean = [t < 4096 for t in T]
    series = fit_series(T, busy, clean)
    assert series.clean and series.used == [512, 1024, 2048] and series.excluded == [4096, 8192]
    assert judge_exponent(series, 1.0).status == "agrees"
    series = fit_series(T, busy, [t < 2048 for t in T])  # two clean lengths: fitted on all, not judged
    assert not series.clean and judge_exponent(series, 1.0).status == "noisy"
    assert judge_exponent(series, 1.0).text.endswith("inconclusive (data not clean)")
    series = fit_series(T[:2], y[:2])
    assert series.fit is None and judge_exponent(series, 1.0).status == "unfitted"
    assert judge_exponent(fit_series(T, [1e-9 * t**2 for t in T]), 1.0).flagged


def test_lengths_below_the_specs_class_from_are_left_out_of_fits(tmp_path):
    """bigbird runs full attention up to (5 + 2r)·b: its cells below the spec's class_from are
    another algorithm, and a fit of its linear class over them read ⚠ 1.58 vs O(T) (main.sh, memory).
    Left out when 3 longer lengths remain; else kept, and the exponent never judged."""

    def shifted(class_from):
        records = _records()
        for rec in records:  # ponet quadratic below 2k (another algorithm there), linear from 2k
            if rec["kind"] == "cell" and rec["label"] == "ponet":
                rec["class_from"] = class_from
                if rec["T"] < 2048:
                    for k in ("mem_peak_bytes", "time_median_s"):
                        rec[k] *= rec["T"] / 2048
                    rec["time_samples"] = [v * rec["T"] / 2048 for v in rec["time_samples"]]
        return records

    md = _report_md(tmp_path / "none", shifted(None))
    assert "⚠" in _row(md, "Complexity", "ponet")  # the short lengths fitted: the class looks wrong
    row = _row(_report_md(tmp_path / "2k", shifted(2048)), "Complexity", "ponet")
    assert "⚠" not in row and "inconclusive" not in row
    assert "left out (shorter than the spec's class_from: another algorithm there): 512, 1k" in row
    row = _row(_report_md(tmp_path / "8k", shifted(8192)), "Complexity", "ponet")  # 2 lengths from 8k: not enough
    assert "⚠" not in row and "inconclusive (lengths below the class's regime)" in row
    assert "includes lengths shorter than the spec's class_from" in row


def test_fit_series_leaves_out_lengths_below_class_from():
    from reports.fit import fit_series, judge_exponent

    T = [256, 512, 1024, 2048, 4096]
    mem = [3.35e6, 6.30e6, 45.3e6, 87.6e6, 174e6]  # bigbird train memory, main.sh (full attention to 704)
    assert judge_exponent(fit_series(T, mem), 1.0).flagged
    series = fit_series(T, mem, class_from=[705] * 5)
    assert series.used == [1024, 2048, 4096] and series.short == [256, 512] and series.in_regime
    assert judge_exponent(series, 1.0).status == "agrees" and abs(series.fit.k - 1.0) < 0.1
    series = fit_series(T, mem, class_from=[1500] * 5)  # two lengths from there: all kept, not judged
    assert not series.in_regime and series.short == [] and series.used == T
    assert judge_exponent(series, 1.0).status == "inconclusive"
    assert fit_series(T, mem, class_from=[None, math.nan, None, None, None]).used == T  # null: every T


def test_series_identity_includes_the_thread_count():
    from reports.cells import is_clean, series_identity

    a = {"label": "ponet", "scope": "mixer", "mode": "forward", "T": 512, "threads": 1, "status": "ok"}
    assert series_identity(a) != series_identity({**a, "threads": 2})
    assert series_identity(a) == series_identity({**a, "T": 1024, "threads": 1.0})
    assert is_clean(a) and not is_clean({**a, "contended": True}) and not is_clean({**a, "noisy": "true"})
    assert not is_clean({**a, "status": "oom"})


def test_held_records_without_a_cell_record_are_named_as_missing(tmp_path):
    """A sweep killed (SIGKILL) after round 1 leaves ``held`` records only: the report says which run
    lost how many cells, up front, and is otherwise built from the cells that were written; a held
    record followed by its cell record is silent (the usual case)."""
    records = _records()
    cells = [r for r in records if r["kind"] == "cell"]
    done, lost = cells[0], cells[1]
    held = [{**done, "kind": "held"}, {**lost, "kind": "held"}, {**cells[2], "kind": "held", "key": "gone-1"}]
    kept = [r for r in records if r is not lost]
    path = tmp_path / "cut.jsonl"
    write_jsonl(path, kept[:1] + held + kept[1:])
    profile = read_profile(path)
    assert profile.cut == sorted([lost["key"], "gone-1"]) and profile.ignored == 0
    assert len(profile.cells) == len(cells) - 1
    report = build_report([path], tmp_path / "out", formats="md", declared=DECLARED)
    assert report.warnings == [f"cut: the sweep was killed before writing 2 cell(s) it had measured in round 1 "
                               "(journalled as held records, without their timing); they are missing from every "
                               "table and fit. Run the same `zoo profile` command with --resume to measure them."]
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("killed before writing 2 cell(s)") < md.index("| ")  # above the first table


def test_a_sweep_timed_beside_busy_neighbours_says_so_above_the_tables(tmp_path):
    """Others busy on the cores the sweep left free: no sample is contended, yet the cells timed
    beside them are marked (``neighbours``, decided by the profiler) and not fitted, and the
    header's pre-flight says why once, above the tables."""
    busy = _records(run_id="busy")
    busy[0]["contention"] = {"cores": 2, "threads": 1, "other_cpu": 1.02, "neighbours": True,
                             "top": [{"pid": 1, "name": "python", "cpu": 1.0}]}
    # the load slowed skeinformer unequally (1.4x at its longest lengths): its fit would read ~1.2
    busy = _slow_down(busy, "skeinformer", {8192, 16384}, lambda T: 1.4 * T / 8192, neighbours=True,
                      neighbour_cpu=1.01)
    quiet = _records(run_id="quiet")
    quiet[0]["contention"] = {"cores": 2, "threads": 1, "other_cpu": 0.0, "neighbours": False, "top": []}
    paths = [write_jsonl(tmp_path / "busy.jsonl", busy), write_jsonl(tmp_path / "quiet.jsonl", quiet)]
    report = build_report(paths, tmp_path / "out", formats="md", declared=DECLARED)
    sentence = ("busy: when the sweep started, other processes used 1.02 of 2 cores (python 1.00), on the cores "
                "its 1 thread(s) left free.")
    assert [w for w in report.warnings if "other processes" in w] == [report.warnings[-1]]
    assert report.warnings[-1].startswith(sentence) and "Quote numbers from a run on a quiet machine." in report.warnings[-1]
    md = (report.out_dir / "report.md").read_text()
    assert md.count("when the sweep started") == 1  # the quiet run has no such sentence
    assert md.index(f"⚠ {sentence}") < md.index("| softmax | ")  # above the first table
    # the marked cells: ≈ in the table, explained, listed with why and the neighbours' cores, not fitted
    assert _row(md, "Consumption", "skeinformer").count("≈") == 2
    assert "≈: timed while other processes used the cores the sweep left free" in md
    unclean = md[md.index("Noisy or contended timings"):]
    assert "| busy | skeinformer | forward | 8192 | neighbours |" in unclean and "– / 1.01" in unclean
    row = next(line for line in md[md.index("Complexity"):].splitlines()
               if line.startswith("| skeinformer | ") and "8k, 16k" in line)
    assert "⚠" not in row and "left out (noisy or busy machine): 8k, 16k" in row
    assert float(row.split("|")[2].split()[0]) == pytest.approx(1.0, abs=0.1)  # fitted on the clean 512..4k


# linformer's training-step memory from two main.sh runs (2-core VM, 2026-12-03, MB): the resident
# peak (mem_peak_bytes) carries ~2 MB of allocator noise over a 70 MB fixed part, the live-tensor
# peak (mem_tensor_peak_bytes) of the same cells grows by exactly 2.1, 4.2, 8.4, 16.8 MB
LIN_T = [256, 512, 1024, 2048, 4096]
LIN_RSS = [73.4e6, 75.2e6, 76.6e6, 85.2e6, 102.0e6]
LIN_TENSOR = [69.47e6, 71.57e6, 75.76e6, 84.15e6, 100.93e6]


def test_a_memory_exponent_the_live_tensor_peak_contradicts_is_inconclusive_not_flagged():
    """main.sh's report read linformer memory ⚠ 1.30 vs O(T), from resident-memory noise: the live
    tensors of the same cells grow linearly. A ⚠ needs the cross-check to be beyond the threshold too."""
    from reports.fit import fit_series, judge_exponent

    assert judge_exponent(fit_series(LIN_T, LIN_RSS), 1.0).flagged  # the resident peak alone
    series = fit_series(LIN_T, LIN_RSS, check=LIN_TENSOR)
    assert abs(series.check.k - 1.0) < 0.02 and series.check.lengths == LIN_T
    verdict = judge_exponent(series, 1.0)
    assert verdict.status == "inconclusive" and "live-tensor peak" in verdict.text and "1.00" in verdict.text
    bigbird = [3.35e6, 6.30e6, 45.3e6, 87.6e6, 174e6]  # a gap both readings show stays flagged
    assert judge_exponent(fit_series(LIN_T, bigbird, check=[0.97 * v for v in bigbird]), 1.0).flagged
    skein_rss = [8974336, 15466496, 21549056, 34349056, 52957184]  # skeinformer train, same run: the
    skein_tensor = [6599692, 11080716, 20212736, 32812032, 51719168]  # tensors' 0.75 is within 0.3
    assert judge_exponent(fit_series(LIN_T, skein_rss, check=skein_tensor), 1.0).status == "inconclusive"
    # a check with a missing reading (CUDA records, older records) is no check
    assert fit_series(LIN_T, LIN_RSS, check=[None] + LIN_TENSOR[1:]).check is None


def test_the_report_and_the_fit_records_use_the_live_tensor_peak_as_the_memory_cross_check(tmp_path):
    from profiler.fit import fit_records

    records = _records(lengths=LIN_T)
    for rec in records:
        if rec["kind"] == "cell" and rec["label"] == "ponet":
            rec["mem_peak_bytes"], rec["mem_tensor_peak_bytes"] = LIN_RSS[LIN_T.index(rec["T"])], LIN_TENSOR[LIN_T.index(rec["T"])]
    row = _row(_report_md(tmp_path, records), "Complexity", "ponet")
    assert "⚠" not in row and "inconclusive (the live-tensor peak fits 1.00, within 0.3 of O(T))" in row
    fits = [f for f in fit_records(records, DECLARED) if f["label"] == "ponet" and f["metric"] == "memory"]
    assert fits and all(f["verdict"] == "inconclusive" and not f["flagged"] for f in fits)
    for rec in records:  # without the cross-check (a CUDA run): the resident peak alone decides
        rec.pop("mem_tensor_peak_bytes", None)
    assert "⚠" in _row(_report_md(tmp_path / "plain", records), "Complexity", "ponet")

"""The report side of quality (torch-free): lr chosen on validation, intervals, Pareto frontier,
the join with profile cells, the rendered section and charts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reports.load import read_profile
from reports.quality import (
    accuracy_rows, choose_lr, join_cost, pareto_front, plot_pareto, quality_frame, read_quality, select_best, t_interval,
)
from reports.render import build_report
from reports.synthetic import synthetic_records, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def _q(label, lr, seed, val, test, task="mqar", T=64, status="ok", chance=0.0625, tps=1000.0):
    return {"kind": "quality", "schema": 1, "run_id": "q0", "key": f"{task}-{T}-{label}-{lr}-{seed}", "task": task,
            "T": T, "mixer": label.split("[")[0], "label": label, "config": {"dim": 64, "heads": 2}, "lr": lr,
            "seed": seed, "val_acc": val, "test_acc": test, "train_acc": val, "status": status,
            "reason": None if status == "ok" else "why", "chance": chance, "tokens_per_s": tps}


RECORDS = [
    _q("softmax", 1e-3, 0, 0.90, 0.80), _q("softmax", 1e-3, 1, 0.92, 0.82),
    _q("softmax", 3e-3, 0, 0.99, 0.97), _q("softmax", 3e-3, 1, 0.97, 0.99),
    _q("fnet", 1e-3, 0, 0.10, 0.07, tps=5000.0), _q("fnet", 1e-3, 1, 0.08, 0.06, tps=5000.0),
    _q("ponet", 1e-3, 0, 0.50, 0.60, tps=3000.0), _q("ponet", 3e-3, 0, 0.55, 0.40, tps=3000.0),
    _q("pyramidion", 1e-3, 0, None, None, status="unsupported"),
]


def test_lr_is_chosen_on_validation_and_reported_on_test():
    best = select_best(quality_frame(RECORDS)).set_index("label")
    assert best.loc["softmax", "lr"] == 3e-3 and best.loc["softmax", "test_mean"] == pytest.approx(0.98)
    assert best.loc["softmax", "test_spread"] == pytest.approx(0.02) and best.loc["softmax", "n"] == 2
    # ponet's test accuracy is higher at 1e-3, but validation picks 3e-3: the test split never chooses
    assert best.loc["ponet", "lr"] == 3e-3 and best.loc["ponet", "test_mean"] == pytest.approx(0.40)
    assert best.loc["pyramidion", "status"] == "unsupported" and best.loc["pyramidion", "reason"] == "why"


def test_lr_grid_on_seed_0_then_the_chosen_lr_on_the_other_seeds():
    """The sweep tried both lrs on seed 0 (val 0.9 vs 0.8), then ran seeds 1, 2 at 1e-3 only. The
    choice is made on the seeds both lrs have (seed 0), so the later seeds, worse on validation,
    cannot flip it to the lr with one seed; the report gives 1e-3 over its three seeds."""
    records = [_q("gla", 1e-3, 0, 0.90, 0.88), _q("gla", 3e-3, 0, 0.80, 0.79),
               _q("gla", 1e-3, 1, 0.50, 0.52), _q("gla", 1e-3, 2, 0.50, 0.49)]
    assert choose_lr(quality_frame(records)) == 1e-3
    best = select_best(quality_frame(records)).iloc[0]
    assert best["lr"] == 1e-3 and best["n"] == 3 and best["test_mean"] == pytest.approx((0.88 + 0.52 + 0.49) / 3)
    # a diverged lr on seed 0 does not count; no ok record at all: no lr
    assert choose_lr(quality_frame([_q("gla", 1e-3, 0, 0.2, 0.2), _q("gla", 3e-3, 0, None, None, status="diverged")])) == 1e-3
    assert choose_lr(quality_frame([_q("gla", 3e-3, 0, None, None, status="error")])) is None


def test_t_interval():
    mean, half = t_interval([0.9, 1.0])
    assert mean == pytest.approx(0.95) and half == pytest.approx(12.706 * 0.0707107 / 2**0.5, rel=1e-4)
    assert t_interval([0.5]) == (0.5, None)


def test_accuracy_table_has_chance_row_intervals_and_bold_best():
    columns, rows, bold = accuracy_rows(select_best(quality_frame(RECORDS)))
    assert columns == ["mixer", "mqar T=64"] and rows[0] == ["chance", "6.2"]
    table = {r[0]: r[1] for r in rows}
    assert table["softmax"].startswith("98.0 ± ") and "chance" not in table["softmax"]
    assert table["fnet"].endswith("(≈chance)")  # its interval reaches the chance level
    assert table["pyramidion"] == "unsupported"
    assert bold == [(1 + ["softmax", "fnet", "ponet", "pyramidion"].index("softmax"), 1)]


def test_pareto_front():
    assert sorted(pareto_front([1, 2, 0.5, 0.4, 2], [0.5, 0.4, 0.9, 0.8, 0.3])) == [0, 1, 2]
    assert pareto_front([1.0, float("nan")], [0.5, 0.9]) == [0]


@pytest.fixture()
def profile_cells(tmp_path):
    path = write_jsonl(tmp_path / "cpu.jsonl", synthetic_records(lengths=[64, 128], scope="model", mode="train",
                                                                  fidelity=False))
    return path, read_profile(path).cells


def test_join_with_profile_by_mixer_and_config(profile_cells):
    _, cells = profile_cells
    joined = join_cost(select_best(quality_frame(RECORDS)), cells).set_index("label")
    cell = cells[(cells["label"] == "softmax") & (cells["T"] == 64)].iloc[0]
    assert joined.loc["softmax", "cost_source"] == "profile"
    assert joined.loc["softmax", "throughput"] == pytest.approx(cell["batch"] * 64 / cell["time_median_s"])
    assert joined.loc["softmax", "mem_peak_bytes"] == cell["mem_peak_bytes"]
    assert joined.loc["pyramidion", "cost_source"] == "quality run"  # no profile cell for it
    other = [dict(r, config={"dim": 64, "heads": 2, "impl": "eager"}) for r in RECORDS]
    joined = join_cost(select_best(quality_frame(other)), cells).set_index("label")
    assert joined.loc["softmax", "cost_source"] == "quality run"  # another config is another mixer


def test_pareto_chart_marks_the_frontier(profile_cells):
    _, cells = profile_cells
    fig = plot_pareto(join_cost(select_best(quality_frame(RECORDS)), cells), "mqar T=64")
    ax = fig.axes[0]
    assert any(c.get_label() == "Pareto frontier (ringed)" for c in ax.collections)
    assert ax.get_xscale() == "log" and "peak memory" in ax.get_title(loc="left")


def test_compare_report_has_the_quality_section(profile_cells, tmp_path):
    profile, _ = profile_cells
    quality = tmp_path / "quality.jsonl"
    quality.write_text("\n".join(json.dumps(r) for r in [{"kind": "header", "schema": 1, "run_id": "q0"}] + RECORDS))
    report = build_report([profile, quality], tmp_path / "out", formats="html,md")
    md = report.files["md"].read_text()
    assert "## Quality next to cost" in md and "**98.0 ±" in md and "| chance | 6.2 |" in md
    assert (tmp_path / "out" / "figures" / "quality-mqar-64.png").stat().st_size > 1000
    assert "<b>98.0 ±" in report.files["html"].read_text()
    assert "does not know" not in md and "| mqar | 64 | softmax | 0.003 | 2 | 98.0 |" in md
    alone = build_report([quality], tmp_path / "alone", formats="md")  # a quality file on its own
    assert "## Quality next to cost" in alone.files["md"].read_text()
    assert len(read_quality([quality])) == len(RECORDS)


def test_reports_quality_imports_no_torch():
    code = ("import sys, reports.quality; bad = [m for m in ('torch', 'zoo', 'profiler') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""The benchmarks' room (profiler/compare.py): side-by-side timing and memory on the profiler's
core, the shared step closure, the report's fit, and targets that decide the exit code."""

from __future__ import annotations

import pytest

from profiler.compare import Case, check_targets, compare, fit_exponent, module_step, random_input, ratio


def test_compare_times_and_measures_two_cases_side_by_side():
    cases = [Case("pool", "benchmarks/bench_pooling.py:build_zoo", {"name": "poolingformer", "T": 64, "dim": 16,
                                                                   "heads": 2}),
             Case("block", "benchmarks/bench_pooling.py:build_zoo", {"name": "pyramidion_block", "T": 64, "dim": 16,
                                                                    "heads": 2})]
    rows = compare(cases, modes=("train",), reps=3, threads=1, max_seconds=5)
    assert [r["case"] for r in rows] == ["pool", "block"]
    for r in rows:
        assert len(r["time_samples"]) == r["rounds"] == 3 and r["time_median_s"] > 0
        assert r["mem_error"] is None and r["mem_peak_bytes"] > 0 and r["mem_method"] in ("vmhwm", "ru_maxrss")
    assert ratio(rows, "pool", "block", "train") > 0


def test_module_step_clears_gradients_after_the_step():
    import torch

    lin = torch.nn.Linear(4, 4)
    step = module_step("train", lin, lin, random_input(1, 3, 4))
    y = step()
    assert y.shape == (1, 3, 4) and not y.requires_grad
    assert all(p.grad is None for p in lin.parameters())  # nothing of the step outlives it
    with pytest.raises(ValueError, match="mode"):
        module_step("backward", lin, lin, random_input(1, 3, 4))


def test_fit_exponent_is_the_report_fit():
    assert fit_exponent([1024, 2048, 4096], [1.0, 4.0, 16.0]) == pytest.approx(2.0, abs=0.01)


def test_targets_decide_the_exit_code(capsys):
    assert check_targets([("a", 0.9, 1.0), ("b", 1.04, 1.05)]) == 0
    assert check_targets([("a", 0.9, 1.0), ("b", 1.2, 1.05)]) == 1
    assert check_targets([("c", None, 1.0)]) == 1
    out = capsys.readouterr().out
    assert "FAIL b: 1.200 (target <= 1.05)" in out and "FAIL c: not measured" in out

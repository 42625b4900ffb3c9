"""The quality sweep: records and their round trip, resume, unsupported cells from the spec,
error records, the LRA loaders on fabricated files, bad input before anything is written."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from profiler.quality import sweep as sweep_mod
from profiler.quality.lra import load_listops_dir, load_listops_tsv, load_lra_pickle
from profiler.quality.sweep import parse_budget, plan_quality, resolve_settings, run_quality
from profiler.quality.tasks import LISTOPS_VOCAB
from reports.quality import read_quality
from zoo import list_mixers
from zoo.errors import ZooValueError

SMALL = dict(lengths="16", depth=1, dim=16, heads=2, ffn=32, batch=8, budget="3", lrs=(3e-3,), seeds=1, jobs=1,
             train_size=64, val_size=16, test_size=16)


def _settings(**kw):
    return resolve_settings(None, **{**SMALL, **kw})


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_round_trip_and_resume(tmp_path):
    out = tmp_path / "q.jsonl"
    s = _settings(tasks="ends,mqar", mixers="softmax,fnet", seeds=2, task_settings={"mqar": {"num_kv": 2}})
    records = run_quality(s, out=out)
    lines = _lines(out)
    assert lines[0]["kind"] == "header" and lines[0]["schema"] == 1 and lines[0]["env"]["torch"]
    assert len(records) == 2 * 2 * 2 and all(r["kind"] == "quality" for r in lines[1:])
    r = records[0]
    for key in ("task", "task_settings", "T", "model", "mixer", "config", "seed", "lr", "steps", "tokens_seen",
                "train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "wall_s", "tokens_per_s",
                "status", "chance", "budget"):
        assert key in r, key
    assert r["status"] == "ok" and r["steps"] == 3 and r["tokens_seen"] == 3 * 8 * 16
    back = read_quality([out])
    assert len(back) == len(records) and set(back["key"]) == {x["key"] for x in records}
    # resume: nothing left to run, only a new header is appended
    again = run_quality(s, out=out, resume=True)
    assert [x["key"] for x in again] == [x["key"] for x in records]
    assert len(_lines(out)) == len(lines) + 1
    # a killed sweep: drop the last two records, resume runs exactly those
    out.write_text("\n".join(json.dumps(x) for x in lines[:-2]) + "\n")
    run_quality(s, out=out, resume=True)
    new = [x for x in _lines(out)[len(lines) - 2:] if x["kind"] == "quality"]
    assert [x["key"] for x in new] == [x["key"] for x in lines[-2:]]


def test_existing_file_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "q.jsonl"
    out.write_text('{"kind": "header", "schema": 1}\n')
    with pytest.raises(ZooValueError, match="--resume"):
        run_quality(_settings(tasks="ends", mixers="softmax"), out=out)


def test_same_cell_same_accuracy(tmp_path):
    s = _settings(tasks="selective_copy", mixers="softmax", task_settings={"selective_copy": {"num_copy": 2}})
    a = run_quality(s, out=tmp_path / "a.jsonl")[0]
    b = run_quality(s, out=tmp_path / "b.jsonl")[0]
    assert a["key"] == b["key"] and a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]


def test_length_reducing_mixers_are_unsupported_on_token_tasks():
    reducing = list_mixers(reduces_length=True)
    cells = plan_quality(_settings(tasks="mqar,ends", mixers=None, task_settings={"mqar": {"num_kv": 2}}))
    assert {c.mixer for c in cells} == set(list_mixers())  # every registered mixer, no special cases
    for c in cells:
        expect = c.task.name == "mqar" and c.mixer in reducing
        assert bool(c.unsupported) == expect, c.title
        if expect:
            assert "reduces the sequence length" in c.unsupported


def test_a_failing_cell_is_an_error_record(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(sweep_mod, "train_run", boom)
    records = run_quality(_settings(tasks="ends", mixers="softmax"), out=tmp_path / "q.jsonl")
    assert records[0]["status"] == "error" and records[0]["reason"] == "RuntimeError: kaput second line"


@pytest.mark.parametrize("kw, message", [
    (dict(tasks="mqar,listop"), "Did you mean 'listops'"),
    (dict(tasks="mqar", lengths="8"), "lengths: task 'mqar'.*needs T >= 24"),
    (dict(budget="0"), "budget: expected a whole number of steps >= 1"),
    (dict(budget="fast"), "budget: expected steps"),
    (dict(budget="3,mqr=5"), "budget: .*Did you mean 'mqar'"),
    (dict(tasks="ends,mqar", budget="mqar=5"), "budget: expected a budget for task 'ends' or a default"),
    (dict(lr_seeds=0), "lr_seeds: expected a positive integer"),
    (dict(jobs=0), "jobs: expected a positive integer"),
    (dict(lrs="1e-3,-1"), "lrs: expected positive"),
    (dict(dim=30, heads=4), "heads: expected a divisor of dim=30"),
    (dict(mixers="sofmax"), "Did you mean 'softmax'"),
    (dict(tasks="mqar", task_settings="mqar.num_pairs=3"), "unknown setting 'num_pairs'"),
    (dict(tasks="mqar", task_settings="mqar.num_kv"), "expected task.key=value"),
    (dict(tasks="ends", task_settings="mqar.num_kv=2"), "for tasks not in the run: mqar"),
])
def test_bad_input_raises_before_writing(tmp_path, kw, message):
    out = tmp_path / "q.jsonl"
    with pytest.raises(ZooValueError, match=message):
        run_quality(_settings(**kw), out=out)
    assert not out.exists()


def test_budget_that_cannot_fit_one_step(tmp_path):
    out = tmp_path / "q.jsonl"
    with pytest.raises(ZooValueError, match="cannot fit one training step"):
        run_quality(_settings(tasks="ends", mixers="softmax", budget="0.000001s"), out=out)
    assert not out.exists()


def test_parse_budget():
    assert parse_budget("400") == (400, None) and parse_budget("12steps") == (12, None)
    assert parse_budget("30s") == (None, 30.0) and parse_budget("5m") == (None, 300.0)
    assert parse_budget("1h") == (None, 3600.0)


# --------------------------------------------------------------------------- LRA loaders
def _write_tsv(path, rows):
    path.write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows))


def test_listops_tsv_loader(tmp_path):
    path = tmp_path / "basic_test.tsv"
    _write_tsv(path, [("( ( [MAX 2 9 ) ] )", 9), ("( ( [SM 4 ( [MIN 5 7 ) ] ) ] )", 9)])
    s = load_listops_tsv(path, 8)
    v = LISTOPS_VOCAB
    assert s.tokens[0].tolist() == [v["[MAX"], v["2"], v["9"], v["]"], 0, 0, 0, 0]
    assert s.tokens[1].tolist() == [v[t] for t in "[SM 4 [MIN 5 7 ] ]".split()] + [0]
    assert s.labels.tolist() == [9, 9] and s.mask[0].tolist() == [True] * 4 + [False] * 4
    assert load_listops_tsv(path, 3).tokens.shape == (2, 3)  # cut to T
    _write_tsv(path, [("[MAX 2 X ]", 2)])
    with pytest.raises(ZooValueError, match="basic_test.tsv:2: unknown token 'X'"):
        load_listops_tsv(path, 8)


def test_lra_pickle_needs_the_opt_in(tmp_path):
    path = tmp_path / "listops.test.pickle"
    data = [{"input_ids_0": [5, 6, 7, 0, 0], "label": 3}, {"input_ids_0": [8, 9, 0, 0, 0], "label": 1}]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ZooValueError, match="--allow-pickle"):
        load_lra_pickle(path, 4)
    s = load_lra_pickle(path, 4, allow_pickle=True)
    assert s.tokens.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]] and s.labels.tolist() == [3, 1]
    assert s.mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    path.write_bytes(pickle.dumps([{"input_ids_0": [1], "input_ids_1": [2], "label": 0}]))
    with pytest.raises(ZooValueError, match="two inputs per example"):
        load_lra_pickle(path, 4, allow_pickle=True)


def test_listops_dir_feeds_the_sweep(tmp_path):
    rows = [("( [MAX 2 9 ) ]", 9), ("( [MIN 2 9 ) ]", 2), ("( [SM 2 9 ) ]", 1)]
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        _write_tsv(tmp_path / name, rows)
    splits = load_listops_dir(tmp_path, 6)
    assert set(splits) == {"train", "val", "test"} and len(splits["train"]) == 3
    records = run_quality(_settings(tasks="listops", mixers="softmax", listops_dir=str(tmp_path)), out=tmp_path / "q.jsonl")
    assert records[0]["status"] == "ok" and records[0]["data"] == "lra"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooValueError, match="holds neither"):
        load_listops_dir(tmp_path / "empty", 6)


def test_lr_grid_on_the_first_seed_then_the_chosen_lr(tmp_path):
    """lr_seeds=1: both lrs on seed 0, then seeds 1 and 2 only at the lr seed 0 chose on validation;
    a resume after losing the later seeds reruns exactly them."""
    out = tmp_path / "q.jsonl"
    s = _settings(tasks="ends", mixers="softmax,fnet", lrs=(1e-4, 3e-3), seeds=3, lr_seeds=1, budget="30",
                  task_settings={"ends": {"symbols": 2}})
    assert {(c.lr, c.seed) for c in plan_quality(s)} == {(1e-4, 0), (3e-3, 0)}
    records = run_quality(s, out=out)
    assert len(records) == 2 * (2 + 2)
    for label in ("softmax", "fnet"):
        mine = [r for r in records if r["label"] == label]
        first = {r["lr"]: r["val_acc"] for r in mine if r["seed"] == 0}
        chosen = max(first, key=first.get)
        assert sorted((r["seed"], r["lr"]) for r in mine if r["seed"] > 0) == [(1, chosen), (2, chosen)]
    lines = _lines(out)
    assert lines[0]["settings"]["cells"] == 8
    out.write_text("\n".join(json.dumps(x) for x in lines[:-3]) + "\n")
    again = run_quality(s, out=out, resume=True)
    new = [x for x in _lines(out)[len(lines) - 3:] if x["kind"] == "quality"]
    assert sorted(x["key"] for x in new) == sorted(x["key"] for x in lines[-3:])
    assert [x["key"] for x in again] == [x["key"] for x in records]


def test_budget_per_task(tmp_path):
    s = _settings(tasks="ends,mqar", mixers="softmax", budget="3,ends=5", task_settings={"mqar": {"num_kv": 2}})
    steps = {r["task"]: (r["steps"], r["budget"]["steps"]) for r in run_quality(s, out=tmp_path / "q.jsonl")}
    assert steps == {"ends": (5, 5), "mqar": (3, 3)}
    # mqar's cells are the same experiments as under a plain "3": resume keeps them
    plain = _settings(tasks="ends,mqar", mixers="softmax", budget="3", task_settings={"mqar": {"num_kv": 2}})
    key = {c.task.name: sweep_mod.cell_key(c, s) for c in plan_quality(s)}
    key_plain = {c.task.name: sweep_mod.cell_key(c, plain) for c in plan_quality(plain)}
    assert key["mqar"] == key_plain["mqar"] and key["ends"] != key_plain["ends"]


def test_two_jobs_give_the_same_numbers_as_one(tmp_path):
    """Cells trained in two worker processes: the same records (but the run-dependent fields)."""
    s = _settings(tasks="ends,selective_copy", mixers="softmax,fnet", budget="4",
                  task_settings={"selective_copy": {"num_copy": 2}})
    one = run_quality(s, out=tmp_path / "one.jsonl")
    two = run_quality(dataclasses.replace(s, jobs=2), out=tmp_path / "two.jsonl")
    fields = ("key", "status", "steps", "train_acc", "val_acc", "test_acc", "test_loss", "final_train_loss", "chance")
    assert [[r[f] for f in fields] for r in one] == [[r[f] for f in fields] for r in two]
    assert all(r["status"] == "ok" and r["jobs"] == 2 and r["threads"] == 1 for r in two)


def test_default_preset_is_the_sized_run():
    """Every registered mixer, the four tasks, three seeds with the lr grid on seed 0, the token
    shift, two jobs; MQAR at its default generator settings (8 pairs at T = 64, not a toy)."""
    s = resolve_settings(None)
    cells = plan_quality(s)
    assert {c.mixer for c in cells} == set(list_mixers())
    assert {c.task.name for c in cells} == {"mqar", "selective_copy", "listops", "ends"} and s.lengths == (64,)
    assert (s.seeds, s.lr_seeds, len(s.lrs), s.token_shift, s.jobs, s.threads) == (3, 1, 2, True, 2, 1)
    assert {c.seed for c in cells} == {0} and len(cells) == len(list_mixers()) * 4 * 2
    mqar = next(c.task for c in cells if c.task.name == "mqar")
    assert (mqar.num_kv, mqar.num_keys, mqar.num_values) == (8, 32, 32)
    assert sweep_mod.train_config(s, "mqar").steps == 150 and sweep_mod.train_config(s, "ends").steps == 100


def test_softmax_learns_the_default_mqar_and_fnet_does_not(tmp_path):
    """The pipeline check of issue 12 on one seed: the default preset's MQAR cell, softmax >= 99% test
    accuracy (the token shift makes it learnable in the budget), FNet (no content routing) near chance."""
    s = resolve_settings(None, tasks="mqar", mixers="softmax,fnet", seeds=1, lrs=(3e-3,), jobs=1)
    records = {r["label"]: r for r in run_quality(s, out=tmp_path / "q.jsonl")}
    assert records["softmax"]["test_acc"] >= 0.99, records["softmax"]
    assert records["fnet"]["test_acc"] < 0.1 and records["fnet"]["chance"] == pytest.approx(1 / 32)

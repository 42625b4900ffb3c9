"""The quality sweep: plan cells (task x T x mixer x lr x seed), train each once, append one
``kind: "quality"`` record per cell (``docs/QUALITY.md``), resume, progress with ETA.

The learning rate is chosen per (task, T, mixer) on the validation split and reported on the
held-out test split (:func:`reports.quality.select_best`, shared with the report). Data splits
come from ``data_seed`` (the same sequences for every mixer); the run seed fixes weights and
batch order. Everything that can be wrong with the input is checked before the file is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from profiler.quality.options import parse_budget, parse_lrs, parse_task_settings, parse_tasks
from profiler.quality.presets import PRESETS
from profiler.quality.tasks import Split, Task, make_task
from profiler.quality.train import TrainConfig, train_run
from profiler.records import RecordWriter, check_writable, environment, now_iso, read_records
from zoo.errors import ZooValueError

__all__ = ["QualitySettings", "QualityCell", "parse_budget", "parse_tasks", "parse_lrs", "plan_quality",
           "resolve_settings", "run_quality", "parse_task_settings", "SCHEMA"]

SCHEMA = 1
_D = PRESETS["default"]  # the dataclass defaults are the default preset (one source of truth)


@dataclass(frozen=True)
class QualitySettings:
    """Everything one ``zoo quality`` run needs (the CLI builds exactly one of these)."""

    tasks: tuple[str, ...] = _D["tasks"]
    mixers: str | None = None  # profiler mixer syntax: "softmax[impl=eager],ponet", wildcards; None = all
    lengths: tuple[int, ...] = _D["lengths"]
    depth: int = _D["depth"]
    dim: int = _D["dim"]
    heads: int = _D["heads"]
    ffn: int = _D["ffn"]
    token_shift: bool = _D["token_shift"]  # Encoder(token_shift=), the same for every mixer
    batch: int = _D["batch"]
    budget: str = _D["budget"]  # "150" / "150steps": steps; "30s", "5m", "1h": wall-clock per cell
    lrs: tuple[float, ...] = _D["lrs"]
    seeds: int = _D["seeds"]
    train_size: int = _D["train_size"]
    val_size: int = _D["val_size"]
    test_size: int = _D["test_size"]
    data_seed: int = 0
    warmup: float = 0.1
    weight_decay: float = 0.1
    threads: int | None = 1
    timeout_s: float | None = 600.0  # a step-budget cell still training after this: timeout
    task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"mqar": {"num_kv": 16}}
    listops_dir: str | None = None  # LRA ListOps TSVs (or processed pickles) replace the generated splits
    allow_pickle: bool = False  # opt-in: load processed LRA pickles (unpickling runs code)
    preset: str | None = None


@dataclass(frozen=True)
class QualityCell:
    task: Task
    T: int
    mixer: str
    overrides: tuple[tuple[str, Any], ...]
    label: str
    config: dict[str, Any]
    lr: float
    seed: int
    unsupported: str | None = None

    @property
    def title(self) -> str:
        return f"{self.task.name} T={self.T} {self.label} lr={self.lr:g} seed={self.seed}"


def resolve_settings(preset: str | None = None, **given: Any) -> QualitySettings:
    """A preset's values, then every option that was given (None = not given)."""
    name = preset or "default"
    if name not in PRESETS:
        raise ZooValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    values = dict(PRESETS[name])
    values.update({k: v for k, v in given.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(QualitySettings)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ZooValueError(f"quality settings: unknown {', '.join(unknown)}")
    from profiler.cases import parse_lengths

    if "lengths" in values:
        values["lengths"] = tuple(parse_lengths(values["lengths"]))
    for key, parse in (("tasks", parse_tasks), ("lrs", parse_lrs), ("task_settings", parse_task_settings)):
        if key in values:
            values[key] = parse(values[key])
    settings = QualitySettings(**values, preset=name)
    _validate(settings)
    return settings


def _validate(s: QualitySettings) -> None:
    from profiler.cases import parse_lengths

    for name in ("depth", "dim", "heads", "ffn", "batch", "seeds", "train_size", "val_size", "test_size"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ZooValueError(f"{name}: expected a positive integer, got {v!r}")
    if not isinstance(s.token_shift, bool):
        raise ZooValueError(f"token_shift: expected true or false, got {s.token_shift!r}")
    if s.dim % s.heads:
        raise ZooValueError(f"heads: expected a divisor of dim={s.dim}, got heads={s.heads}")
    if s.threads is not None and (isinstance(s.threads, bool) or not isinstance(s.threads, int) or s.threads < 1):
        raise ZooValueError(f"threads: expected a positive integer, got {s.threads!r}")
    if not (0.0 <= s.warmup < 1.0):
        raise ZooValueError(f"warmup: expected a fraction in [0, 1), got {s.warmup!r}")
    parse_lengths(s.lengths)
    parse_tasks(s.tasks)
    parse_lrs(s.lrs)
    parse_budget(s.budget)


def train_config(s: QualitySettings) -> TrainConfig:
    steps, seconds = parse_budget(s.budget)
    return TrainConfig(depth=s.depth, dim=s.dim, heads=s.heads, ffn=s.ffn, token_shift=s.token_shift, batch=s.batch,
                       steps=steps, seconds=seconds, warmup=s.warmup, weight_decay=s.weight_decay,
                       timeout_s=s.timeout_s if seconds is None else None)


def plan_quality(s: QualitySettings) -> list[QualityCell]:
    """Every cell in run order (task, T, mixer, lr, seed); bad input raises before anything runs."""
    from profiler.cases import parse_lengths, parse_mixers
    from zoo.registry import get_config, get_spec

    lengths = parse_lengths(s.lengths)
    choices = parse_mixers(s.mixers)
    tasks = [make_task(t, **s.task_settings.get(t, {})) for t in parse_tasks(s.tasks)]
    unknown = sorted(set(s.task_settings) - {t.name for t in tasks})
    if unknown:
        raise ZooValueError(f"task settings: for tasks not in the run: {', '.join(unknown)}")
    for task in tasks:
        for T in lengths:
            if s.listops_dir is None or task.name != "listops":
                task.check_length(T)
    configs = {}
    for c in choices:
        config = get_config(c.name, dim=s.dim, heads=s.heads, **dict(c.overrides))
        configs[c.label] = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    cells = []
    for task in tasks:
        for T in lengths:
            for c in choices:
                reason = None
                if task.level == "token" and get_spec(c.name).reduces_length:
                    reason = (f"{c.name} reduces the sequence length (spec.reduces_length), so it has no output per "
                              f"input token for the token-level task {task.name}")
                for lr in parse_lrs(s.lrs):
                    for seed in range(s.seeds):
                        cells.append(QualityCell(task, T, c.name, tuple(c.overrides), c.label, configs[c.label], lr, seed, reason))
    return cells


def cell_key(cell: QualityCell, s: QualitySettings) -> str:
    """What makes two cells the same experiment (resume skips a key already in the file)."""
    ident = {
        "task": cell.task.name, "task_settings": cell.task.settings(), "T": cell.T, "mixer": cell.mixer,
        "config": cell.config, "lr": cell.lr, "seed": cell.seed, "depth": s.depth, "ffn": s.ffn,
        "token_shift": s.token_shift, "batch": s.batch,
        "budget": s.budget, "sizes": [s.train_size, s.val_size, s.test_size], "data_seed": s.data_seed,
        "warmup": s.warmup, "weight_decay": s.weight_decay, "listops_dir": s.listops_dir if cell.task.name == "listops" else None,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_splits(task: Task, T: int, s: QualitySettings) -> dict[str, Split]:
    """train / val / test from disjoint generator streams of ``data_seed`` (or the LRA files)."""
    if task.name == "listops" and s.listops_dir is not None:
        from profiler.quality.lra import load_listops_dir

        return load_listops_dir(s.listops_dir, T, allow_pickle=s.allow_pickle)
    streams = np.random.SeedSequence([s.data_seed, T, sum(map(ord, task.name))]).spawn(3)
    sizes = {"train": s.train_size, "val": s.val_size, "test": s.test_size}
    return {name: task.generate(n, T, np.random.default_rng(stream)) for (name, n), stream in zip(sizes.items(), streams)}


def _record(cell: QualityCell, s: QualitySettings, run_id: str, result: dict[str, Any], chance: float | None,
            started: str, wall: float, threads: int | None) -> dict[str, Any]:
    steps, seconds = parse_budget(s.budget)
    rec = {
        "kind": "quality", "schema": SCHEMA, "run_id": run_id, "key": cell_key(cell, s), "task": cell.task.name,
        "task_settings": cell.task.settings(), "level": cell.task.level, "T": cell.T, "mixer": cell.mixer,
        "label": cell.label, "config": cell.config, "overrides": dict(cell.overrides),
        "model": {"depth": s.depth, "dim": s.dim, "heads": s.heads, "ffn": s.ffn, "token_shift": s.token_shift,
                  "vocab": cell.task.vocab, "classes": cell.task.classes},
        "params": None, "batch": s.batch, "seed": cell.seed, "lr": cell.lr, "data_seed": s.data_seed,
        "sizes": {"train": s.train_size, "val": s.val_size, "test": s.test_size},
        "data": "lra" if (cell.task.name == "listops" and s.listops_dir) else "generated",
        "budget": {"kind": "steps" if steps else "seconds", "steps": steps, "seconds": seconds},
        "status": "error", "reason": None, "steps": None, "tokens_seen": None, "chance": chance,
        "train_acc": None, "train_loss": None, "val_acc": None, "val_loss": None, "test_acc": None, "test_loss": None,
        "final_train_loss": None, "train_time_s": None, "tokens_per_s": None, "threads": threads,
        "started_at": started, "wall_s": round(wall, 4),
    }
    rec.update({k: v for k, v in result.items() if k in rec or k == "planned_steps"})
    if rec["status"] == "ok":
        rec["reason"] = None
    return rec


def _run_cell(cell: QualityCell, splits: dict[str, Split], cfg: TrainConfig) -> dict[str, Any]:
    if cell.unsupported:
        return {"status": "unsupported", "reason": cell.unsupported}
    try:
        return train_run(cell.task, splits, cell.mixer, dict(cell.overrides), cell.T, cfg, cell.lr, cell.seed)
    except MemoryError:
        return {"status": "error", "reason": "out of memory (MemoryError)"}
    except Exception as exc:  # a broken cell is a record, never a crashed sweep
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"status": "error", "reason": f"{type(exc).__name__}: {text[:300]}"}


def _probe_budget(cells: list[QualityCell], s: QualitySettings, cfg: TrainConfig) -> None:
    """A wall-clock budget must fit one training step of the longest runnable cell."""
    if cfg.seconds is None:
        return
    runnable = [c for c in cells if not c.unsupported]
    if not runnable:
        return
    cell = max(runnable, key=lambda c: c.T)
    probe = dataclasses.replace(cfg, steps=1, seconds=None, timeout_s=None)
    split = cell.task.generate(max(cfg.batch, 1), cell.T, np.random.default_rng(0)) if not (
        cell.task.name == "listops" and s.listops_dir) else make_splits(cell.task, cell.T, s)["train"]
    t0 = time.perf_counter()
    train_run(cell.task, {"train": split, "test": split}, cell.mixer, dict(cell.overrides), cell.T, probe, cell.lr, 0)
    took = time.perf_counter() - t0
    if took > cfg.seconds:
        raise ZooValueError(
            f"budget: {s.budget!r} cannot fit one training step (one step and an evaluation of {cell.label} on "
            f"{cell.task.name} at T={cell.T} took {took:.2f} s)"
        )


def _chance(task: Task, splits: dict[str, Split]) -> float:
    labels = splits["test"].labels
    return task.chance(labels[labels >= 0] if labels.ndim == 2 else labels)


def _grouped(cells: list[QualityCell]) -> Iterator[tuple[tuple[str, int], list[QualityCell]]]:
    group: list[QualityCell] = []
    for cell in cells:
        if group and (group[0].task, group[0].T) != (cell.task, cell.T):
            yield (group[0].task.name, group[0].T), group
            group = []
        group.append(cell)
    if group:
        yield (group[0].task.name, group[0].T), group


def run_quality(
    s: QualitySettings, *, out: str | Path, resume: bool = False, overwrite: bool = False,
    progress: bool = False, command: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the planned cells, appending one record each to ``out``; returns the records of this
    run and of earlier runs in the file for the planned cells (resume)."""
    import torch

    cells = plan_quality(s)
    cfg = train_config(s)
    path = check_writable(out)
    has_records = path.exists() and path.stat().st_size > 0
    if has_records and not (resume or overwrite):
        raise ZooValueError(f"out: {str(path)!r} already holds records; pass --resume to add the missing cells "
                            "or --overwrite to replace it")
    previous = {}
    if resume and not overwrite:
        previous = {r["key"]: r for r in read_records(path) if r.get("kind") == "quality" and r.get("key")}
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    threads = torch.get_num_threads()
    _probe_budget(cells, s, cfg)
    keys = [cell_key(c, s) for c in cells]
    todo = [c for c, k in zip(cells, keys) if k not in previous]
    run_id = uuid.uuid4().hex[:12]
    header = {
        "kind": "header", "schema": SCHEMA, "run_id": run_id, "created": now_iso(), "what": "quality",
        "command": list(command if command is not None else sys.argv), "env": environment(threads, "cpu"),
        "settings": {**{k: v for k, v in dataclasses.asdict(s).items()}, "resume": resume, "cells": len(cells),
                     "todo": len(todo)},
    }
    bar = _Progress(len(cells), len(cells) - len(todo)) if progress else None
    written: list[dict[str, Any]] = []
    with RecordWriter(path, truncate=overwrite) as writer:
        writer.append(header)
        try:
            for (_, T), group in _grouped(todo):
                splits = None
                for cell in group:
                    if bar:
                        bar.start_cell(cell.title)
                    if splits is None and not cell.unsupported:
                        splits = make_splits(cell.task, T, s)
                    started, t0 = now_iso(), time.monotonic()
                    result = _run_cell(cell, splits, cfg) if splits is not None or cell.unsupported else {}
                    chance = _chance(cell.task, splits) if splits is not None else None
                    rec = _record(cell, s, run_id, result, chance, started, time.monotonic() - t0, threads)
                    writer.append(rec)
                    written.append(rec)
                    if bar:
                        bar.done_cell(rec)
        finally:
            if bar:
                bar.stop()
    latest = dict(previous)
    latest.update({r["key"]: r for r in written})
    return [latest[k] for k in keys if k in latest]


class _Progress:
    """A rich progress bar: current cell, done/total, elapsed and ETA; non-ok cells printed."""

    def __init__(self, total: int, done: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(stderr=True))
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total, completed=done)

    def start_cell(self, title: str) -> None:
        self.bar.update(self.task, description=title)

    def done_cell(self, rec: dict[str, Any]) -> None:
        if rec["status"] not in ("ok", "unsupported"):
            self.bar.console.print(f"{rec['label']} {rec['task']} T={rec['T']}: {rec['status']}: {rec['reason']}",
                                   markup=False, highlight=False)
        self.bar.advance(self.task)

    def stop(self) -> None:
        self.bar.update(self.task, description="done")
        self.bar.stop()

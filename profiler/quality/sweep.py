"""The quality sweep: plan cells (task x T x mixer x lr x seed), train each once, append one
``kind: "quality"`` record per cell (``docs/QUALITY.md``), resume, progress with ETA.

The learning rate is chosen per (task, T, mixer) on the validation split and reported on the
held-out test split (:func:`reports.quality.choose_lr`, shared with the report). With
``lr_seeds=k`` only the first k seeds try every lr; once they are done, the other seeds run at
the lr chosen on those seeds' validation accuracy (:func:`plan_followups`). Cells run in this
process or in ``jobs`` worker processes (:mod:`profiler.quality.execute`). Data splits
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
from typing import Any

import numpy as np

from profiler.quality.options import budget_for, parse_budget, parse_lrs, parse_task_settings, parse_tasks
from profiler.quality.presets import PRESETS
from profiler.quality.tasks import Split, Task, make_task
from profiler.quality.train import TrainConfig, train_run
from profiler.records import RecordWriter, check_writable, environment, now_iso, read_records
from zoo.errors import ZooValueError

__all__ = ["QualitySettings", "QualityCell", "parse_budget", "parse_tasks", "parse_lrs", "plan_quality", "plan_followups",
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
    budget: str = _D["budget"]  # per cell: "150" steps, "30s"/"5m"/"1h" wall clock; "150,mqar=400" per task
    lrs: tuple[float, ...] = _D["lrs"]
    seeds: int = _D["seeds"]
    lr_seeds: int | None = _D["lr_seeds"]  # the first seeds try every lr, the rest the chosen one (None: all)
    jobs: int = _D["jobs"]  # cells trained at once, each in its own process
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
    if values.get("lr_seeds") == "all":
        values["lr_seeds"] = None
    settings = QualitySettings(**values, preset=name)
    _validate(settings)
    return settings


def _validate(s: QualitySettings) -> None:
    from profiler.cases import parse_lengths

    for name in ("depth", "dim", "heads", "ffn", "batch", "seeds", "jobs", "train_size", "val_size", "test_size"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ZooValueError(f"{name}: expected a positive integer, got {v!r}")
    if s.lr_seeds is not None and (isinstance(s.lr_seeds, bool) or not isinstance(s.lr_seeds, int) or s.lr_seeds < 1):
        raise ZooValueError(f"lr_seeds: expected a positive integer or all, got {s.lr_seeds!r}")
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
    for task in parse_tasks(s.tasks):
        budget_for(s.budget, task)


def train_config(s: QualitySettings, task: str) -> TrainConfig:
    steps, seconds = parse_budget(budget_for(s.budget, task))
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
    first = min(s.seeds, s.lr_seeds or s.seeds)
    cells = []
    for task in tasks:
        for T in lengths:
            for c in choices:
                reason = None
                if task.level == "token" and get_spec(c.name).reduces_length:
                    reason = (f"{c.name} reduces the sequence length (spec.reduces_length), so it has no output per "
                              f"input token for the token-level task {task.name}")
                for lr in parse_lrs(s.lrs):
                    for seed in range(first):
                        cells.append(QualityCell(task, T, c.name, tuple(c.overrides), c.label, configs[c.label], lr, seed, reason))
    return cells


def plan_followups(s: QualitySettings, cells: list[QualityCell], records: list[dict[str, Any]]) -> list[QualityCell]:
    """With ``lr_seeds``: the seeds past it for each (task, T, label) of ``cells``, at the lr chosen on
    the validation accuracy of ``records`` (none for a group without an ok record)."""
    from reports.quality import choose_lr, quality_frame

    first = min(s.seeds, s.lr_seeds or s.seeds)
    if first == s.seeds:
        return []
    frame = quality_frame(records)
    parts = {} if frame.empty else dict(iter(frame.groupby(["task", "T", "label"], sort=False)))
    out, seen = [], set()
    for cell in cells:
        group = (cell.task.name, cell.T, cell.label)
        if group in seen or cell.unsupported:
            continue
        seen.add(group)
        lr = choose_lr(parts[group]) if group in parts else None
        if lr is not None:
            out.extend(dataclasses.replace(cell, lr=lr, seed=seed) for seed in range(first, s.seeds))
    return out


def cell_key(cell: QualityCell, s: QualitySettings) -> str:
    """What makes two cells the same experiment (resume skips a key already in the file)."""
    ident = {
        "task": cell.task.name, "task_settings": cell.task.settings(), "T": cell.T, "mixer": cell.mixer,
        "config": cell.config, "lr": cell.lr, "seed": cell.seed, "depth": s.depth, "ffn": s.ffn,
        "token_shift": s.token_shift, "batch": s.batch,
        "budget": budget_for(s.budget, cell.task.name), "sizes": [s.train_size, s.val_size, s.test_size], "data_seed": s.data_seed,
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
    steps, seconds = parse_budget(budget_for(s.budget, cell.task.name))
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
        "final_train_loss": None, "train_time_s": None, "tokens_per_s": None, "threads": threads, "jobs": s.jobs,
        "started_at": started, "wall_s": round(wall, 4),
    }
    rec.update({k: v for k, v in result.items() if k in rec or k == "planned_steps"})
    if rec["status"] == "ok":
        rec["reason"] = None
    return rec


def run_cell(cell: QualityCell, splits: dict[str, Split], cfg: TrainConfig) -> dict[str, Any]:
    if cell.unsupported:
        return {"status": "unsupported", "reason": cell.unsupported}
    try:
        return train_run(cell.task, splits, cell.mixer, dict(cell.overrides), cell.T, cfg, cell.lr, cell.seed)
    except MemoryError:
        return {"status": "error", "reason": "out of memory (MemoryError)"}
    except Exception as exc:  # a broken cell is a record, never a crashed sweep
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"status": "error", "reason": f"{type(exc).__name__}: {text[:300]}"}


def _probe_budget(cells: list[QualityCell], s: QualitySettings) -> None:
    """A wall-clock budget must fit one training step of the task's longest runnable cell."""
    for name in dict.fromkeys(c.task.name for c in cells):
        cfg = train_config(s, name)
        runnable = [c for c in cells if c.task.name == name and not c.unsupported]
        if cfg.seconds is None or not runnable:
            continue
        cell = max(runnable, key=lambda c: c.T)
        probe = dataclasses.replace(cfg, steps=1, seconds=None, timeout_s=None)
        split = cell.task.generate(max(cfg.batch, 1), cell.T, np.random.default_rng(0)) if not (
            cell.task.name == "listops" and s.listops_dir) else make_splits(cell.task, cell.T, s)["train"]
        t0 = time.perf_counter()
        train_run(cell.task, {"train": split, "test": split}, cell.mixer, dict(cell.overrides), cell.T, probe, cell.lr, 0)
        took = time.perf_counter() - t0
        if took > cfg.seconds:
            raise ZooValueError(
                f"budget: {budget_for(s.budget, name)!r} cannot fit one training step (one step and an evaluation "
                f"of {cell.label} on {name} at T={cell.T} took {took:.2f} s)"
            )


def chance_level(task: Task, splits: dict[str, Split]) -> float:
    labels = splits["test"].labels
    return task.chance(labels[labels >= 0] if labels.ndim == 2 else labels)


def run_quality(
    s: QualitySettings, *, out: str | Path, resume: bool = False, overwrite: bool = False,
    progress: bool = False, command: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the planned cells (then, with ``lr_seeds``, the later seeds at the chosen lr), appending
    one record each to ``out``; returns the records of this run and of earlier runs in the file
    for the planned cells (resume)."""
    import torch

    from profiler.quality.execute import run_cells

    cells = plan_quality(s)
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
    _probe_budget(cells, s)
    keys = [cell_key(c, s) for c in cells]
    todo = [c for c, k in zip(cells, keys) if k not in previous]
    later = (s.seeds - min(s.seeds, s.lr_seeds or s.seeds)) * len({(c.task, c.T, c.label) for c in cells if not c.unsupported})
    run_id = uuid.uuid4().hex[:12]
    header = {
        "kind": "header", "schema": SCHEMA, "run_id": run_id, "created": now_iso(), "what": "quality",
        "command": list(command if command is not None else sys.argv), "env": environment(threads, "cpu"),
        "settings": {**{k: v for k, v in dataclasses.asdict(s).items()}, "resume": resume,
                     "cells": len(cells) + later, "todo": len(todo)},
    }
    bar = _Progress(len(cells) + later, len(cells) - len(todo)) if progress else None
    latest = dict(previous)

    def run(batch: list[QualityCell]) -> None:
        for c, outcome in run_cells(batch, s, s.jobs, bar.start_cell if bar else None):
            rec = _record(c, s, run_id, outcome["result"], outcome["chance"], outcome["started"], outcome["wall"], threads)
            writer.append(rec)
            latest[rec["key"]] = rec
            if bar:
                bar.done_cell(rec)

    with RecordWriter(path, truncate=overwrite) as writer:
        writer.append(header)
        try:
            run(todo)
            follow = plan_followups(s, cells, [latest[k] for k in keys if k in latest])
            keys += [cell_key(c, s) for c in follow]
            if bar:
                bar.done_previous(sum(k in previous for k in keys[len(cells):]))
            run([c for c, k in zip(follow, keys[len(cells):]) if k not in previous])
        finally:
            if bar:
                bar.stop()
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

    def start_cell(self, cell: QualityCell) -> None:
        self.bar.update(self.task, description=cell.title)

    def done_previous(self, n: int) -> None:
        """Cells found in the file (resume) that the bar did not count as done yet."""
        self.bar.advance(self.task, n)

    def done_cell(self, rec: dict[str, Any]) -> None:
        if rec["status"] not in ("ok", "unsupported"):
            self.bar.console.print(f"{rec['label']} {rec['task']} T={rec['T']}: {rec['status']}: {rec['reason']}",
                                   markup=False, highlight=False)
        self.bar.advance(self.task)

    def stop(self) -> None:
        self.bar.update(self.task, description="done")
        self.bar.stop()

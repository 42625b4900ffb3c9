"""Parsers of ``zoo quality`` options (one source of truth for each format): budget (one, or one
per task), tasks, learning rates and generator settings. Each raises a one-line ZooValueError naming the option."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from profiler.quality.tasks import make_task, task_names
from zoo.errors import ZooValueError

__all__ = ["parse_budget", "parse_budgets", "budget_for", "parse_tasks", "parse_lrs", "parse_task_settings"]

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|s|sec|m|min|h)?\s*$", re.IGNORECASE)


def parse_budget(text: str | int) -> tuple[int | None, float | None]:
    """``"400"``/``"400steps"`` -> (400, None); ``"30s"``/``"5m"``/``"1h"`` -> (None, seconds)."""
    m = _BUDGET.match(str(text))
    if not m:
        raise ZooValueError(f"budget: expected steps (400, 400steps) or a duration (30s, 5m, 1h), got {text!r}")
    value, unit = float(m.group(1)), (m.group(2) or "steps").lower()
    if unit.startswith("step"):
        if value < 1 or value != int(value):
            raise ZooValueError(f"budget: expected a whole number of steps >= 1, got {text!r}")
        return int(value), None
    seconds = value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise ZooValueError(f"budget: expected a positive duration, got {text!r}")
    return None, seconds


def parse_budgets(text: str | int) -> dict[str | None, str]:
    """Budgets per task: ``"150"`` -> ``{None: "150"}``; ``"150,mqar=400"`` -> ``{None: "150",
    "mqar": "400"}`` (mqar trains 400 steps, every other task 150). Each budget is checked by
    :func:`parse_budget`; a task named twice, an unknown task or two defaults raise."""
    out: dict[str | None, str] = {}
    for item in (i.strip() for i in str(text).split(",")):
        task, _, value = item.rpartition("=")
        name = task.strip() or None
        if name is not None:
            try:
                make_task(name)
            except ZooValueError as exc:
                raise ZooValueError(f"budget: {exc}") from None
        if name in out:
            what = f"task {name!r}" if name else "a default (a budget without task=)"
            raise ZooValueError(f"budget: expected one budget per task, got {what} twice in {text!r}")
        parse_budget(value)
        out[name] = value.strip()
    return out


def budget_for(text: str | int, task: str) -> str:
    """The budget text of ``task`` in a ``--budget`` value (its own, else the default)."""
    budgets = parse_budgets(text)
    if task in budgets:
        return budgets[task]
    if None not in budgets:
        raise ZooValueError(f"budget: expected a budget for task {task!r} or a default, got {str(text)!r} "
                            f"(e.g. 150,{task}=400)")
    return budgets[None]


def parse_tasks(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    if not items or any(not t for t in items):
        raise ZooValueError(f"tasks: expected a comma list of {', '.join(task_names())}, got {text!r}")
    for t in items:
        make_task(t)  # did-you-mean on a typo
    return tuple(dict.fromkeys(items))


def parse_lrs(text: str | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ZooValueError(f"lrs: expected a comma list of positive numbers like 1e-3,3e-3, got {text!r}") from None
        if not (value > 0 and np.isfinite(value)):
            raise ZooValueError(f"lrs: expected positive learning rates, got {item!r}")
        out.append(value)
    if not out:
        raise ZooValueError("lrs: expected at least one learning rate, got nothing")
    return tuple(dict.fromkeys(out))


def parse_task_settings(text: str | dict) -> dict[str, dict[str, Any]]:
    """``"mqar.num_kv=4,mqar.num_keys=16"`` -> ``{"mqar": {"num_kv": 4, "num_keys": 16}}``."""
    if isinstance(text, dict):
        return text
    out: dict[str, dict[str, Any]] = {}
    for item in (i.strip() for i in text.split(",")):
        m = re.fullmatch(r"([a-z_]+)\.([a-z_]+)=([-+.\w]+)", item)
        if not m:
            raise ZooValueError(f"task settings: expected task.key=value items like mqar.num_kv=4, got {item!r}")
        task, key, raw = m.groups()
        try:
            value: Any = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                raise ZooValueError(f"task settings: {task}.{key}: expected a number, got {raw!r}") from None
        out.setdefault(task, {})[key] = value
    return out

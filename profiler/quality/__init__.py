"""Quality next to cost: train every mixer on synthetic long-range tasks (``zoo quality``).

``tasks`` (generators and chance levels) · ``lra`` (loaders for the real LRA ListOps data) ·
``train`` (one run: AdamW, warm-up, budget, determinism) · ``options`` (option parsers) ·
``sweep`` (cells, lr grid, seeds, records, resume) · ``execute`` (cells in this process or in
``jobs`` worker processes) · ``presets``. Records: ``docs/QUALITY.md``.
"""

from profiler.quality.sweep import QualitySettings, plan_quality, resolve_settings, run_quality
from profiler.quality.tasks import TASKS, make_task, task_names

__all__ = ["QualitySettings", "plan_quality", "resolve_settings", "run_quality", "TASKS", "make_task", "task_names"]

"""Length sweeps of registered mixers: time, peak memory and FLOPs per cell, isolated and resumable.

    from profiler import run_profile, load_results, parse_lengths
    path = run_profile(preset="quick", out="runs/quick.jsonl", overwrite=True)
    df = load_results(path)            # tidy pandas DataFrame, one row per cell

Rooms, one job each: ``cases`` (the cell grid, parsers; ``presets``) · ``settings`` (one validated
:class:`~profiler.settings.SweepSettings`) · ``sweep`` (plan -> decide -> execute -> record) ·
``executors`` (fork / spawn / in-process) · ``isolation`` (cell processes and how they ended) ·
``cell`` (one cell's protocol) · ``builders`` (the only room that imports zoo) · ``timing`` ·
``memory`` (with ``heap``, the CPU heap policy) · ``flops`` · ``records`` (JSON Lines + header) ·
``fit`` (fit records; torch-free) · ``table`` (the end table) · ``fidelity``.
"""

from profiler.cases import PRESETS, parse_lengths
from profiler.records import load_results
from profiler.sweep import run_profile, run_sweep

__all__ = ["run_profile", "run_sweep", "load_results", "parse_lengths", "PRESETS"]

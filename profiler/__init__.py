"""Length sweeps of registered mixers: time, peak memory and FLOPs per cell, isolated and resumable.

    from profiler import run_profile, load_results, parse_lengths
    path = run_profile(preset="quick", out="runs/quick.jsonl", overwrite=True)
    df = load_results(path)            # tidy pandas DataFrame, one row per cell

Modules: ``cases`` (cell grid, presets, parsers), ``measure`` (time, memory and FLOPs of one
cell, run inside the cell's process), ``runner`` (sweep, isolation, OOM/timeout, resume,
progress), ``records`` (JSON Lines + environment header, ``docs/RECORDS.md``), ``fit`` (fit
records; torch-free).
"""

from profiler.cases import PRESETS, parse_lengths
from profiler.records import load_results
from profiler.runner import run_profile

__all__ = ["run_profile", "load_results", "parse_lengths", "PRESETS"]

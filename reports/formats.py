"""Text for numbers: lengths, times, bytes, ratios. The one formatter of each for reports, the
CLI and the profiler's end table (standard library only)."""

from __future__ import annotations

import math

__all__ = ["format_length", "format_tokens", "format_number", "format_ratio", "format_bytes", "format_time"]


def format_length(T: float) -> str:
    """A measured length: 512, 1k, 1.5k, 16k, 1M (binary k/M only when exact to one decimal)."""
    T = float(T)
    for unit, scale in (("M", 2**20), ("k", 2**10)):
        if T >= scale and (T / scale) == round(T / scale, 1):
            return f"{T / scale:g}{unit}"
    return f"{T:.0f}"


def format_tokens(T: float | None) -> str:
    """An estimated length (a crossover): three figures in binary k/M, '?' when unknown."""
    if T is None or (isinstance(T, float) and math.isnan(T)):
        return "?"
    if math.isinf(T):
        return "∞"
    for unit, scale in (("M", 2**20), ("k", 2**10)):
        if T >= scale:
            value = T / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{T:.0f}"


def format_number(v: float | None) -> str:
    """Three significant figures without scientific notation for the usual range."""
    if v is None or not math.isfinite(v):
        return "–"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.001:
        return f"{v:.3g}"
    return f"{v:.2e}"


def format_ratio(r: float) -> str:
    """'(0.25×)', '(1.3×)', '(12×)'."""
    if r >= 100:
        return f"({r:,.0f}×)"
    if r >= 10:
        return f"({r:.0f}×)"
    if r >= 0.1:
        return f"({r:.2g}×)" if r < 1 else f"({r:.1f}×)"
    return f"({r:.2g}×)"


def format_bytes(n: float | None) -> str:
    """'512 B', '3.2 KiB', '1.5 GiB'; '–' when unknown."""
    if n is None or not math.isfinite(n):
        return "–"
    for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_time(s: float | None) -> str:
    """Seconds as '850 µs', '12.3 ms', '1.25 s'; '–' when unknown."""
    if s is None or not math.isfinite(s):
        return "–"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if abs(s) < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"

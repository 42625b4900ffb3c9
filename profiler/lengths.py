"""Sequence lengths and memory sizes from text: ``1k..16k``, ``1k..16k:x1.5``, ``1k..4k:+1k``,
``512,2048,3000`` (k = 1024, m = 1024**2, "1.5k" = 1536); ``8g``, ``512MiB``, ``1.5GB``."""

from __future__ import annotations

import math
import re
from typing import Iterable

from zoo.errors import ZooValueError

__all__ = ["parse_lengths", "parse_size"]

_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_MAX_CELLS_PER_RANGE = 10_000


def _parse_count(text: str, what: str, whole: str) -> int:
    m = _NUMBER.match(text)
    if not m:
        raise ZooValueError(
            f"lengths: expected a length like 512, 4k or 1.5k in {whole!r}, got {text.strip()!r}"
        )
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value != int(value):
        raise ZooValueError(f"lengths: expected a whole number of tokens in {whole!r}, got {text.strip()!r} = {value:g}")
    if value < 1:
        raise ZooValueError(f"lengths: expected lengths >= 1 in {whole!r}, got {text.strip()!r}")
    return int(value)


def _parse_range(item: str, whole: str) -> list[int]:
    body, _, step = item.partition(":")
    lo_text, _, hi_text = body.partition("..")
    lo = _parse_count(lo_text, "start", whole)
    hi = _parse_count(hi_text, "end", whole)
    if hi < lo:
        raise ZooValueError(f"lengths: expected start <= end in {item.strip()!r}, got {lo} > {hi}")
    step = step.strip()
    out: list[int] = []
    if not step or step.lower().startswith("x"):
        factor = 2.0
        if step:
            try:
                factor = float(step[1:])
            except ValueError:
                raise ZooValueError(
                    f"lengths: expected a step like x2 or x1.5 after ':' in {item.strip()!r}, got {step!r}"
                ) from None
            if not factor > 1.0 or math.isinf(factor):
                raise ZooValueError(f"lengths: expected a factor > 1 in {item.strip()!r}, got {step!r}")
        i = 0
        while True:
            value = int(round(lo * factor**i))
            if value > hi * (1 + 1e-9):
                break
            if not out or value != out[-1]:
                out.append(value)
            i += 1
            if len(out) > _MAX_CELLS_PER_RANGE:
                raise ZooValueError(f"lengths: {item.strip()!r} expands to more than {_MAX_CELLS_PER_RANGE} lengths")
    elif step.startswith("+"):
        inc = _parse_count(step[1:], "step", whole)
        if (hi - lo) // inc + 1 > _MAX_CELLS_PER_RANGE:
            raise ZooValueError(f"lengths: {item.strip()!r} expands to more than {_MAX_CELLS_PER_RANGE} lengths")
        out = list(range(lo, hi + 1, inc))
    else:
        raise ZooValueError(
            f"lengths: expected a step like x2, x1.5 or +512 after ':' in {item.strip()!r}, got {step!r}"
        )
    return out


def parse_lengths(text: str | Iterable[int]) -> list[int]:
    """Sorted, de-duplicated sequence lengths from ``1k..16k``-style text (or ints, checked)."""
    if not isinstance(text, str):
        values = list(text)
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad or not values:
            raise ZooValueError(f"lengths: expected positive integers, got {values!r}")
        return sorted(set(values))
    if not text.strip():
        raise ZooValueError("lengths: expected lengths like 1k..16k or 512,2048, got an empty string")
    out: set[int] = set()
    for item in text.split(","):
        if not item.strip():
            raise ZooValueError(f"lengths: expected a length between commas in {text!r}, got an empty item")
        if ".." in item:
            out.update(_parse_range(item, text))
        elif ":" in item:
            raise ZooValueError(f"lengths: a step (':') needs a range like 1k..16k:x2, got {item.strip()!r}")
        else:
            out.add(_parse_count(item, "length", text))
    return sorted(out)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """Bytes from ``8g``, ``512MiB``, ``1.5GB`` (binary units) or a plain number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ZooValueError(f"memory budget: expected a positive size, got {text!r}")
        return int(text)
    m = _SIZE.match(str(text))
    if not m:
        raise ZooValueError(f"memory budget: expected a size like 8g, 512MiB or 1.5GB, got {text!r}")
    scale = 1024 ** " kmgt".index((m.group(2) or " ").lower())
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ZooValueError(f"memory budget: expected a positive size, got {text!r}")
    return value



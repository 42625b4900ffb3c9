"""Timing a zero-argument callable: warm-up, blocked adaptive repetitions, a summary of samples.

Nothing here knows about mixers or cells; the profiler's cells and the benchmarks' side-by-side
comparisons both time through these functions.

* :func:`warm_up` calls until >= ``min_calls`` calls and >= ``min_seconds`` have passed, the
  clock starting *after* the first call it is told about (a first call pays one-off set-up:
  lazy kernel loading, cuBLAS/cuFFT plans); on CUDA it synchronises before reading the clock.
* :func:`time_calls` takes one sample per *block* of calls (as ``torch.utils.benchmark``'s
  blocked_autorange) until IQR/median <= :data:`TARGET_IQR` with >= :data:`STABLE_REPS`
  samples, or the budget is spent with >= ``min_reps`` samples. ``perf_counter`` on CPU, CUDA
  events on GPU. Raw samples are returned.
* A *load probe* (optional): an object with ``begin() -> None`` and ``end() -> dict`` (at least
  ``contended: bool`` and ``other_cpu: float``, the other processes' CPU use in cores during
  the sample). Every sample is wrapped in begin/end; a contended sample is discarded and retaken
  while the budget allows. ``info`` then receives ``contended_samples`` (discarded),
  ``other_cpu`` (mean over every sample taken) and ``contended`` (True when the minimum number
  of clean samples could not be had; the contended samples are then used as well).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol

import torch

__all__ = [
    "LoadProbe",
    "CellTimeout",
    "time_calls",
    "size_block",
    "block_for",
    "enough_samples",
    "enough",
    "Sampler",
    "timer",
    "warm_up",
    "summarise_samples",
    "TARGET_IQR",
    "NOISY_IQR",
    "STABLE_REPS",
    "MIN_REPS",
    "MAX_REPS",
    "WARMUP_CALLS",
    "WARMUP_SECONDS",
]

TARGET_IQR = 0.05  # stop repeating once IQR/median is below this (with >= STABLE_REPS samples)
NOISY_IQR = 0.10  # flag cells still above this after the budget (STYLE.md)
STABLE_REPS = 10
MIN_REPS = 3
MAX_REPS = 200
MIN_BLOCK_S = 0.025  # a timing sample is a block of calls lasting at least this long (blocked_autorange)
MAX_BLOCK = 1000
CONFIRM_MIN_BLOCK = 8  # a block sized from single calls at least this long is checked on a quarter of it
WARMUP_CALLS = 2  # calls after the first one
WARMUP_SECONDS = 0.2


class CellTimeout(Exception):
    """The deadline passed (raised between calls; an isolated cell is also killed from outside).
    ``args[1]``, when present, holds the raw samples taken so far."""


class LoadProbe(Protocol):
    def begin(self) -> None: ...

    def end(self) -> dict[str, Any]: ...


def summarise_samples(samples: list[float]) -> dict[str, Any]:
    """Median, IQR, 20/80th percentiles, count, raw samples, the noisy flag and steps per second."""
    import numpy as np

    a = np.asarray(samples, dtype=float)
    med = float(np.median(a))
    q20, q25, q75, q80 = (float(v) for v in np.percentile(a, [20, 25, 75, 80]))
    iqr = q75 - q25
    return {
        "time_median_s": med,
        "time_iqr_s": iqr,
        "time_p20_s": q20,
        "time_p80_s": q80,
        "time_n": len(samples),
        "time_samples": [float(s) for s in samples],
        "noisy": bool(med > 0 and iqr / med > NOISY_IQR),
        "steps_per_s": (1.0 / med) if med > 0 else None,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(fn):
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return cuda_time

    def cpu_time(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cpu_time


def warm_up(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    calls: int = 0,
    since: float | None = None,
    min_calls: int = WARMUP_CALLS,
    min_seconds: float = WARMUP_SECONDS,
    at_least: int = 0,
    deadline: float | None = None,
) -> tuple[int, float]:
    """Call ``fn`` until >= ``min_calls`` calls (``calls`` already made count) and >= ``min_seconds``
    since ``since`` (``perf_counter``; now if None), and >= ``at_least`` calls made here.
    Returns (warm-up calls, warm-up seconds). The caller makes the *first* call (set-up) before
    ``since``, so it is never counted. Raises :class:`CellTimeout` past ``deadline`` (monotonic)."""
    device = torch.device(device)
    _sync(device)
    start = time.perf_counter() if since is None else since
    here = 0
    while calls < min_calls or here < at_least or time.perf_counter() - start < min_seconds:
        fn()
        _sync(device)  # a queued call is not a finished one: the clock must see the GPU's work
        calls += 1
        here += 1
        if deadline is not None and time.monotonic() > deadline:
            raise CellTimeout("deadline passed during warm-up")
    return calls, time.perf_counter() - start


class Sampler:
    """Takes samples through a clock, wrapping each in a load probe when one is given."""

    def __init__(self, clock, probe: LoadProbe | None):
        self.clock, self.probe = clock, probe
        self.clean: list[float] = []
        self.dirty: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[list[float], bool] = (self.clean, False)  # where take() put its sample

    def take(self, fn: Callable[[], Any], divide: int = 1) -> float:
        """One sample (returned); with a probe it goes to the clean or the contended list."""
        if self.probe is None:
            self.clean.append(self.clock(fn) / divide)
            self._last = (self.clean, False)
            return self.clean[-1]
        self.probe.begin()
        t = self.clock(fn) / divide
        seen = self.probe.end() or {}
        read = seen.get("other_cpu") is not None  # None: unreadable here (no /proc), not "idle"
        if read:
            self.cpu.append(float(seen["other_cpu"]))
        kept = self.dirty if seen.get("contended") else self.clean
        kept.append(t)
        self._last = (kept, read)
        return t

    @property
    def last_clean(self) -> bool:
        """Whether the sample just taken went to the clean list (False: contended)."""
        return self._last[0] is self.clean

    def forget_last(self) -> None:
        """Drop the sample just taken (a sizing call that turned out shorter than a block)."""
        kept, read = self._last
        kept.pop()
        if read:
            self.cpu.pop()

    def result(self, min_reps: int, info: dict | None) -> list[float]:
        if self.probe is None:
            return self.clean
        contended = len(self.clean) < min_reps and bool(self.dirty)
        if info is not None:
            info.update(contended_samples=len(self.dirty), contended=contended,
                        other_cpu=(sum(self.cpu) / len(self.cpu)) if self.cpu else None)
        return self.clean + self.dirty if contended else self.clean


def block_for(per_call: float, min_block_s: float = MIN_BLOCK_S) -> int:
    """Calls per sample so that a sample lasts at least ``min_block_s`` (at most :data:`MAX_BLOCK`)."""
    if per_call >= min_block_s:
        return 1
    return int(min(MAX_BLOCK, math.ceil(min_block_s / max(per_call, 1e-7))))


def size_block(sampler: Sampler, clock, fn: Callable[[], Any], min_block_s: float = MIN_BLOCK_S) -> int:
    """Calls per sample: the median of up to 3 single calls sizes the block (a fresh process's first
    call is often cold); a first call as long as a block is already a (probed) sample. A block of
    >= :data:`CONFIRM_MIN_BLOCK` calls is then resized from a run of a quarter of it: a single short
    call costs more than its share of a block (fixed per-call overhead, colder caches), so blocks
    sized from single calls alone came out 10-25% short of ``min_block_s`` on a quiet host and half
    of it on a busy one."""
    import numpy as np

    probes = [sampler.take(fn)]
    if probes[0] < min_block_s:
        sampler.forget_last()
        while len(probes) < 3 and probes[-1] < min_block_s:
            probes.append(clock(fn))
    block = block_for(float(np.median(probes)), min_block_s)
    if block >= CONFIRM_MIN_BLOCK:
        n = block // 4

        def run_quarter():
            for _ in range(n):
                fn()

        block = block_for(clock(run_quarter) / n, min_block_s)
    if block == 1 and sampler.probe is None and probes[0] < min_block_s:
        sampler.clean.extend(probes)
    return block


def enough_samples(sampler: Sampler, spent: float, budget_s: float, min_reps: int = MIN_REPS,
                   max_reps: int = MAX_REPS) -> bool:
    """The stopping rule (:func:`enough`) over a sampler's clean samples."""
    return enough(sampler.clean, len(sampler.clean) + len(sampler.dirty), spent, budget_s, min_reps, max_reps)


def enough(clean: list[float], taken: int, spent: float, budget_s: float, min_reps: int = MIN_REPS,
           max_reps: int = MAX_REPS) -> bool:
    """The stopping rule: ``max_reps`` clean samples (or 4x that ``taken`` in all), the budget spent
    with ``min_reps``, or IQR/median <= :data:`TARGET_IQR` over >= :data:`STABLE_REPS` clean samples.
    (The interleaved pass applies it to its samples with the host's drift taken out.)"""
    import numpy as np

    n = len(clean)
    if n >= max_reps or taken >= 4 * max_reps:
        return True
    if spent >= budget_s and (n >= min_reps or taken >= min_reps):
        return True
    if n >= STABLE_REPS:
        q25, q50, q75 = np.percentile(clean, [25, 50, 75])
        if q50 > 0 and (q75 - q25) / q50 <= TARGET_IQR:
            return True
    return False


def time_calls(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    budget_s: float = 2.0,
    deadline: float | None = None,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
    min_block_s: float = MIN_BLOCK_S,
    info: dict | None = None,
    probe: LoadProbe | None = None,
) -> list[float]:
    """Seconds per call, one sample per block of calls (see the module docstring). Raises
    :class:`CellTimeout` past ``deadline`` (``time.monotonic()`` seconds). :func:`size_block`
    sizes the block; :func:`enough_samples` decides when to stop. ``info`` receives ``block``
    (calls per sample) and, with a ``probe``, the contention fields."""
    device = torch.device(device)
    clock = timer(device)
    _sync(device)
    sampler = Sampler(clock, probe)
    start = time.perf_counter()
    block = size_block(sampler, clock, fn, min_block_s)
    if info is not None:
        info["block"] = block

    def run_block():
        for _ in range(block):
            fn()

    while not enough_samples(sampler, time.perf_counter() - start, budget_s, min_reps, max_reps):
        if deadline is not None and time.monotonic() > deadline:
            raise CellTimeout(f"deadline passed after {len(sampler.clean)} timed samples", sampler.clean + sampler.dirty)
        sampler.take(run_block, block)
    return sampler.result(min_reps, info)

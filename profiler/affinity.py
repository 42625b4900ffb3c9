"""Pinning a CPU cell to the cores others leave free (issue 10). Torch-free.

*Why.* A cell that runs ``threads`` threads on a machine with more usable cores is otherwise free
to migrate: the scheduler may put it on the core a busy process holds (and a child forked next to
it starts on the same core), and the contention probe can only judge "others used more than the
free cores" over *all* cores. Pinned to the quietest ``threads`` cores, the cell's cores are a
known set: others' CPU time on exactly those cores is the contention (the probe, built after
pinning, reads its cores from the affinity mask), and the cell is never moved onto the busy one.
Measured on the 2-core machine (softmax forward at T = 2048, one thread, a pure-Python spinner
started next to it): 2x slower when the spinner was free to run on the cell's core, within the
quiet runs' spread when it was held to the other one.

:func:`pin_quietest` is called in the cell's own process (a fork), so the pinning dies with it;
an in-process caller gets its previous mask back from :func:`restore`. It does nothing where the
affinity or per-CPU counters cannot be read (macOS), or when the cell uses every usable core.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from profiler.contention import per_cpu_ticks

__all__ = ["PIN_WINDOW_S", "per_cpu_busy", "quietest", "pin_quietest", "restore", "free_cpus"]

PIN_WINDOW_S = 0.1  # others' per-CPU use is read over this much wall time before a cell pins

# the mask pin_quietest found (the CPUs the sweep may use) while this process is pinned, else None
_unpinned: frozenset[int] | None = None


def per_cpu_busy(proc: str = "/proc") -> dict[int, float] | None:
    """{cpu id: busy ticks since boot} (:func:`profiler.contention.per_cpu_ticks`' busy part)."""
    ticks = per_cpu_ticks(proc)
    return None if ticks is None else {c: busy for c, (busy, _) in ticks.items()}


def quietest(n: int, allowed: frozenset[int], before: dict[int, float], after: dict[int, float]) -> list[int]:
    """The ``n`` CPUs of ``allowed`` that were least busy between two :func:`per_cpu_busy` reads
    (ties: the lower id), sorted."""
    if n < 1 or n > len(allowed):
        raise ValueError(f"n: expected 1..{len(allowed)} (the usable CPUs), got {n!r}")
    load = {c: after.get(c, 0.0) - before.get(c, 0.0) for c in allowed}
    return sorted(sorted(allowed, key=lambda c: (load[c], c))[:n])


def _set_all_threads(cpus: set[int]) -> None:
    """The affinity of every thread of this process (a new thread inherits its creator's mask)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue  # the thread ended meanwhile


def pin_quietest(threads: int, *, window_s: float = PIN_WINDOW_S, read: Callable[[], dict | None] = per_cpu_busy,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[list[int], frozenset[int]] | None:
    """Pin this process to the ``threads`` quietest usable CPUs, read over ``window_s`` seconds of
    sleep. Returns (pinned CPUs, the previous mask) or None when nothing was pinned (every usable
    core is needed, or the platform cannot say)."""
    global _unpinned
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = frozenset(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return None
    before = read()
    sleep(window_s)
    after = read()
    if before is None or after is None:
        return None
    cpus = quietest(threads, allowed, before, after)
    _set_all_threads(set(cpus))
    _unpinned = allowed
    return cpus, allowed


def restore(previous: frozenset[int] | None) -> None:
    """Give this process back the mask :func:`pin_quietest` returned (no-op for None)."""
    global _unpinned
    if previous is not None and hasattr(os, "sched_setaffinity"):
        _set_all_threads(set(previous))
        _unpinned = None


def free_cpus() -> frozenset[int]:
    """The CPUs the sweep may use that this process was not pinned to by :func:`pin_quietest` (the
    ones it leaves to others): empty when not pinned or where the affinity cannot be read."""
    if _unpinned is None or not hasattr(os, "sched_getaffinity"):
        return frozenset()
    return _unpinned - frozenset(os.sched_getaffinity(0))

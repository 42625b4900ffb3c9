"""The CPU heap's behaviour during a measurement (glibc ``mallopt``), so that the clock measures
the mixer and the resident-memory peak measures its tensors, not the allocator's history.

PyTorch's CPU allocator is glibc ``malloc``. By default glibc serves blocks above a *dynamic*
mmap threshold (128 KiB rising to 32 MiB after large frees) with ``mmap``/``munmap`` and trims
the heap top on free. A step's timing then depends on what ran before it in the process:

* the same cell, timed twice, paid 0 or ~5,000 page faults per call (9 vs 16 ms) depending on
  where the dynamic threshold stood, and a tensor crossing the 32 MiB ceiling (performer's
  features at T = 8k) turned heap reuse into a page fault per page per call: a step in the
  time-vs-length curve that is the allocator's, not the algorithm's;
* the resident high-water mark over-reports the live-tensor peak by up to 2x (retained heap).

Two modes, set explicitly around each phase of a cell (``profiler.cell``):

``"tracking"`` (the memory pass): a fixed 1 MiB mmap and trim threshold. Every large tensor is its
own mapping, returned on free, so ``VmHWM`` growth equals the live-tensor peak to within a few
MiB (checked against the dispatch-mode tracker for ponet, performer, linformer and
transnormer_diag at 1k-16k, forward and train).

``"caching"`` (warm-up and timed calls): no ``mmap`` and no trimming, so after the first call
every step reuses heap pages already faulted in: the steady state of a caching allocator, as
PyTorch's CUDA allocator gives on GPU. Fork-per-cell and in-process timings then agree, and IQRs
drop from 10-35% to a few % at 1k-4k on 2 cores. Its price is footprint: freed blocks are kept
and reused first-fit, up to 2.9x the step's live peak (linformer train at 16k), so the profiler
times a step in the tracking heap when 3x its measured peak does not fit the memory budget
(``softmax[impl=eager]`` train at 16k: 13 GB), and falls back to it after an OOM.

``"system"`` leaves glibc as it is (``--cpu-heap system``). Outside glibc (macOS, musl) every mode
is a no-op and :func:`set_heap_mode` reports ``"system"``. No torch import here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["HEAP_MODES", "CPU_HEAP_CHOICES", "set_heap_mode", "current_heap_mode", "release_heap"]

HEAP_MODES = ("tracking", "caching", "system")
# what a user picks per sweep: "managed" = tracking heap for the memory pass, caching heap for timing
CPU_HEAP_CHOICES = ("managed", "system")

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_MAX_DEFAULT = 65536
_TRACKING_THRESHOLD = 1 << 20

_libc = None
_current = "system"  # the mode last set in this process (glibc's own until set_heap_mode)


def _glibc():
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = lib
            except (OSError, AttributeError):
                _libc = False
    return _libc or None


def set_heap_mode(mode: str) -> str:
    """Switch the process's heap to ``mode`` (see the module docstring); returns the mode in
    force: ``mode`` itself, or ``"system"`` where the C library is not glibc."""
    global _current
    if mode not in HEAP_MODES:
        raise ValueError(f"cpu heap: expected one of {', '.join(HEAP_MODES)}, got {mode!r}")
    if mode == "system":
        return "system"  # glibc's settings cannot be handed back once set: "system" changes nothing
    lib = _glibc()
    if lib is None:
        return "system"
    if mode == "tracking":
        ok = lib.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT) and lib.mallopt(_M_MMAP_THRESHOLD, _TRACKING_THRESHOLD)
        ok = ok and lib.mallopt(_M_TRIM_THRESHOLD, _TRACKING_THRESHOLD)
    else:  # caching: never mmap (the heap serves every size), never trim on free (-1 -> SIZE_MAX)
        ok = lib.mallopt(_M_MMAP_MAX, 0) and lib.mallopt(_M_TRIM_THRESHOLD, -1)
    if ok:
        _current = mode
    return mode if ok else "system"


def current_heap_mode() -> str:
    """The mode last set by :func:`set_heap_mode` in this process (``"system"`` before any)."""
    return _current


def release_heap() -> None:
    """Give free heap pages back to the kernel (``malloc_trim(0)``, every arena)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)

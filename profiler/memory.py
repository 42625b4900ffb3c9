"""Peak memory of a zero-argument callable, the budget that bounds it, and what counts as an OOM.

* CPU: the resident high-water mark is reset (``echo 5 > /proc/self/clear_refs``) after
  ``malloc_trim``, the call runs plainly, and the growth of ``VmHWM`` over ``VmRSS`` is the
  peak; the live-tensor peak of :class:`LiveTensorTracker` (the fake pass's, else a second
  call's) is the cross-check (``mem_disagree``). Run it in
  the *tracking* heap (``profiler/heap.py``) so resident growth equals the live-tensor peak.
* CUDA: ``max_memory_allocated`` minus the allocated baseline.
* Budgets: on CPU ``RLIMIT_AS`` (an allocation past it fails as a catchable error), on CUDA
  ``torch.cuda.set_per_process_memory_fraction`` (the caching allocator raises an OOM past it).
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from profiler.heap import release_heap

__all__ = [
    "LiveTensorTracker",
    "CountingTracker",
    "traced_step",
    "status_bytes",
    "memory_pass_cpu",
    "memory_pass_cuda",
    "set_memory_limit",
    "set_cuda_memory_limit",
    "is_oom",
    "release_after_oom",
]

DISAGREE_MEMORY = 0.25  # tensor peak vs RSS peak
DISAGREE_MEMORY_FLOOR = 8 * 2**20  # below this, page granularity and allocator slack dominate
AS_SLACK = 256 * 2**20  # address-space slack over the budget (thread stacks, malloc arenas)
_OOM_TEXT = ("can't allocate memory", "Cannot allocate memory", "out of memory", "CUDA out of memory",
             "CUBLAS_STATUS_ALLOC_FAILED")


def status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``, ``VmSize``), None elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class LiveTensorTracker(TorchDispatchMode):
    """Peak of live tensor-storage bytes allocated while active (``PROFILING.md`` 5.5).

    Every op output whose storage is new (not one of the op's inputs' storages) is counted until
    its storage is freed (weakref finaliser); views and in-place results of tracked storages
    update the size only, storages that existed before the tracker are never counted. Eager
    only: compiled or higher-order-op paths raise, and the memory pass falls back to RSS alone.
    ``ops`` collects the SDPA ops seen (the backend a call used).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.ops: set[str] = set()
        self._mark = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def mark(self) -> None:
        """Start a new window: :attr:`window_peak` is measured from here, above the live bytes."""
        self._mark = self.current
        self.peak = self.current

    @property
    def window_peak(self) -> int:
        return max(0, self.peak - self._mark)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name:
            self.ops.add(name)
        inputs = set()
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                try:
                    inputs.add(t.untyped_storage()._cdata)
                except (RuntimeError, NotImplementedError):
                    pass
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key, nbytes = storage._cdata, storage.nbytes()
            if key in self.live:
                self.current += nbytes - self.live[key]
                self.live[key] = nbytes
            elif key not in inputs:
                self.live[key] = nbytes
                self.current += nbytes
                weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


class CountingTracker(LiveTensorTracker):
    """The tracker with a fast path for ``prim`` ops (a tensor's device or layout: no tensor out,
    nothing to track; a Python loop over chunks asks for them per chunk) that also hands every op
    to ``counter.count(func, args, kwargs, out)`` while a counter is set: one dispatch mode where
    a tracker and a counter would be two (a fake pass's cost is mostly per-op dispatch: half the
    time, measured on mamba2 forward and gated_deltanet train at 4k)."""

    def __init__(self, counter=None) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "prim":
            return func(*args, **(kwargs or {}))
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.counter is not None:
            self.counter.count(func, args, kwargs or {}, out)
        return out


def traced_step(make_step: Callable[[], Any], counter=None) -> tuple[int, int, set[str]]:
    """One call of the step ``make_step()`` builds, as the memory pass measures it, under a
    :class:`CountingTracker`: (bytes live before the call, the call's peak above them, the ops it
    dispatched); ``counter`` sees every op of the call. A step that ``keeps_state`` is called once
    first (then its ``reset``): the measured step is a steady one, with the state already live. Run
    it under ``FakeTensorMode`` for a prediction (no compute, no memory)."""
    tracker = CountingTracker()
    with tracker:
        step = make_step()
        if step.keeps_state:
            out = step.fn()
            del out
            if step.reset is not None:
                step.reset()
        before = tracker.current
        tracker.mark()
        tracker.counter = counter
        out = step.fn()
        tracker.counter = None
        del out
    return before, tracker.window_peak, tracker.ops


def _warm_tracker() -> None:
    """Enter a dispatch mode once: its first use imports and caches Python code (tens of MiB of
    resident memory) that must not be charged to the measured step."""
    with LiveTensorTracker():
        (torch.ones(4) * 2).sum()


def _fresh_baseline(reset: Callable[[], None] | None) -> tuple[int | None, bool]:
    if reset is not None:
        reset()
    gc.collect()
    release_heap()  # freed pages back to the kernel: the next peak counts from scratch
    base = status_bytes("VmRSS")
    return base, base is not None and _reset_hwm()


def _rss_result(base: int | None, resettable: bool) -> dict[str, Any]:
    if resettable:
        hwm = status_bytes("VmHWM") or 0
        return {"mem_peak_bytes": max(0, hwm - base), "mem_abs_peak_bytes": hwm, "mem_method": "vmhwm"}
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mem_peak_bytes": max(0, maxrss - (base or 0)), "mem_abs_peak_bytes": maxrss, "mem_method": "ru_maxrss"}


def memory_pass_cpu(fn: Callable[[], Any], track: bool = True, reset: Callable[[], None] | None = None,
                    tensor_peak: int | None = None) -> dict[str, Any]:
    """Resident growth over one plain call of ``fn`` and, with ``track``, the live-tensor peak:
    ``tensor_peak`` when the caller has it (a fake pass's: the same tracker over fake tensors),
    else a second call under :class:`LiveTensorTracker` (``_ops`` in the result: the SDPA ops it
    used). The resident call never runs under a dispatch mode: the mode's own Python allocations
    would be charged to the step (+3 MiB, 6%, on poolingformer forward at 4k)."""
    base, resettable = _fresh_baseline(reset)
    out = fn()
    del out
    result = _rss_result(base, resettable)
    if not track:
        return result
    ops: list[str] | None = None
    if tensor_peak is None:
        _warm_tracker()
        if reset is not None:
            reset()
        tracker = LiveTensorTracker()
        try:
            with tracker:
                out = fn()
            del out
            tensor_peak, ops = tracker.window_peak, sorted(tracker.ops)
        except Exception as exc:  # the tracker cannot follow this path (HOPs, compile): RSS alone
            if is_oom(exc):
                raise
            return result
    result["mem_tensor_peak_bytes"] = int(tensor_peak)
    rss = result["mem_peak_bytes"]
    big = max(tensor_peak, rss)
    result["mem_disagree"] = bool(big >= DISAGREE_MEMORY_FLOOR and abs(tensor_peak - rss) > DISAGREE_MEMORY * big)
    if ops is not None:
        result["_ops"] = ops
    return result


def memory_pass_cuda(fn: Callable[[], Any], device: torch.device, reset: Callable[[], None] | None = None) -> dict[str, Any]:
    """One call of ``fn`` on a CUDA device: peak allocated bytes over the baseline."""
    if reset is not None:
        reset()
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    del out
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "mem_peak_bytes": max(0, peak - base),
        "mem_abs_peak_bytes": peak,
        "mem_method": "cuda",
        "mem_reserved_bytes": torch.cuda.max_memory_reserved(device),
    }


def set_memory_limit(budget: int | None, threads: int | None) -> None:
    """CPU: RLIMIT_AS = current address space + budget (+ slack): allocations past it fail cleanly."""
    if not budget:
        return
    import resource

    size = status_bytes("VmSize")
    if size is None:
        return
    limit = size + int(budget) + AS_SLACK + 80 * 2**20 * max(1, int(threads or 1))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def set_cuda_memory_limit(budget: int | None, device: torch.device) -> float | None:
    """CUDA: cap the caching allocator at ``budget`` bytes of the device (``None``: no cap);
    an allocation past it raises ``torch.OutOfMemoryError``. Returns the fraction set."""
    if not budget:
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, max(1e-6, int(budget) / total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def is_oom(exc: BaseException) -> bool:
    """An allocator error: MemoryError, torch.OutOfMemoryError, or the allocators' OOM texts
    (glibc, CUDA caching allocator, cuBLAS workspace)."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(s in text for s in _OOM_TEXT)
    return False


def release_after_oom(device: torch.device) -> None:
    """After an OOM in this process (``--no-isolate``): free what the failed call left cached, so
    the next cell does not start against a full allocator."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    else:
        release_heap()

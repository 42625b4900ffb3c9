"""Time, memory and FLOPs of one cell's step: what runs inside the (isolated) cell process.

:func:`measure_cell` is the whole protocol for one cell (``PROFILING.md`` 5.1-5.6):

1. threads set explicitly, denormals flushed, seeds fixed;
2. a *fake pass*: the builder runs under ``FakeTensorMode`` (shapes only, no compute, no memory)
   with a live-tensor tracker and ``FlopCounterMode`` (FFT and CPU SDPA formulas added). It gives
   the predicted peak (cells that cannot fit the memory budget become ``oom``, inferred, without
   running) and the counted FLOPs. Mixers with data-dependent shapes cannot run fake; their
   prediction then comes from the runner's extrapolation of shorter lengths (or is absent) and
   their FLOPs are counted during the first real call;
3. the real module and inputs are built (outside every timed region), the first call's output is
   checked (shape, finite values: a red check is ``error``, never a number);
4. the memory pass (also the second warm-up call), after ``Step.reset`` (gradients of the previous
   step dropped, so the baseline does not hold memory the step frees and re-allocates): on CPU
   the resident high-water mark is reset
   (``echo 5 > /proc/self/clear_refs``) after ``malloc_trim``, the step runs under the
   live-tensor tracker, and the growth of ``VmHWM`` over ``VmRSS`` is the peak; on CUDA
   ``max_memory_allocated`` minus the allocated baseline;
5. warm-up until >= 2 calls and >= 0.2 s, then timed calls (``perf_counter`` on CPU, CUDA events
   on GPU) until IQR/median <= 5 % (with >= 10 samples) or the per-cell time budget is spent
   (>= 3 samples). Raw samples are kept.

Steps are built by a *builder* ``build(cell, device, dtype) -> Step``; :func:`build_step` is the
registry's (mixer scope: the mixer alone; model scope: :class:`zoo.models.Encoder`). Tests pass
their own builder by reference (``"path/to/file.py:function"`` or ``"module:function"``).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import importlib.util
import math
import os
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from profiler.cases import DTYPES, Cell
from profiler.heap import CPU_HEAP_CHOICES, release_heap, set_heap_mode
from zoo.errors import ZooError

__all__ = [
    "Step",
    "CellTimeout",
    "LiveTensorTracker",
    "build_step",
    "count_flops",
    "extra_flop_formulas",
    "measure_cell",
    "time_calls",
    "summarise_samples",
    "classify_exception",
    "load_builder",
]

TARGET_IQR = 0.05  # stop repeating once IQR/median is below this (with >= STABLE_REPS samples)
NOISY_IQR = 0.10  # flag cells still above this after the budget (STYLE.md)
STABLE_REPS = 10
MIN_REPS = 3
MAX_REPS = 200
CACHING_HEAP_FOOTPRINT = 3.0  # the caching heap's footprint, worst seen: 2.9x the step's peak (linformer train, 16k)
MIN_BLOCK_S = 0.025  # a timing sample is a block of calls lasting at least this long (blocked_autorange)
MAX_BLOCK = 1000
WARMUP_CALLS = 2
WARMUP_SECONDS = 0.2
DISAGREE_MEMORY = 0.25  # tensor peak vs RSS peak
DISAGREE_MEMORY_FLOOR = 8 * 2**20  # below this, page granularity and allocator slack dominate
DISAGREE_FLOPS = 2.0


class CellTimeout(Exception):
    """The cell's deadline passed (raised between calls; the isolated runner also kills)."""


@dataclass
class Step:
    """What a builder returns: a zero-argument step and what is known about it.

    ``fn()`` runs one forward (no grad) or one training step and returns its output (checked on
    the first call by ``check``, which raises on a bad shape or non-finite values). ``reset()``
    frees what the previous call left behind (gradients), so that the memory pass's baseline does
    not hold memory the step itself frees and re-allocates.
    """

    fn: Callable[[], Any]
    params: int = 0
    flops_analytic: float | None = None
    check: Callable[[Any], None] | None = None
    reset: Callable[[], None] | None = None  # drop state a previous call left (grads) before a memory pass


# --------------------------------------------------------------------------- builders
def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, DTYPES[name])


def _spec_flops(spec, config, B: int, T: int, causal: bool) -> float:
    return float(spec.flops(config, B, T, causal=True) if causal else spec.flops(config, B, T))


def _check_tensor(what: str, t: Any, shape: tuple | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise RuntimeError(f"check: {what}: expected a tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"check: {what}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise RuntimeError(f"check: {what}: non-finite values (NaN or inf)")


def build_step(cell: Cell, device: torch.device, dtype: torch.dtype) -> Step:
    """The registry's builder: mixer scope (the mixer alone) or model scope (the LRA encoder)."""
    if cell.scope == "model":
        return _build_model_step(cell, device, dtype)
    from zoo.registry import create_mixer

    overrides = {k: v for k, v in cell.config.items() if k not in ("dim", "heads")}
    module = create_mixer(cell.mixer, dim=cell.dim, heads=cell.heads, device=device, dtype=dtype, **overrides)
    B, T, D = cell.batch, cell.T, cell.dim
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, T, D, generator=gen, device=device, dtype=dtype)  # (B, T, D)
    T_out = module.out_len(T)
    flops = _spec_flops(module.spec, module.config, B, T, cell.causal)
    params = [p for p in module.parameters()]
    n_params = sum(p.numel() for p in params)
    causal = cell.causal

    if cell.mode == "forward":
        module.eval()

        def step():
            with torch.no_grad():
                return module(x, causal=causal)  # (B, T_out, D)

        def check(y):
            _check_tensor("output", y, (B, T_out, D))

        return Step(step, n_params, flops, check)

    module.train()
    x.requires_grad_(True)
    grad_out = torch.randn(B, T_out, D, generator=gen, device=device, dtype=dtype)  # (B, T_out, D)

    def clear_grads():
        x.grad = None
        for p in params:
            p.grad = None

    def train_step():
        clear_grads()
        y = module(x, causal=causal)  # (B, T_out, D)
        y.backward(grad_out)
        return y

    def train_check(y):
        _check_tensor("output", y, (B, T_out, D))
        _check_tensor("input gradient", x.grad, (B, T, D))
        for name, p in module.named_parameters():
            if p.grad is not None:
                _check_tensor(f"gradient of {name}", p.grad)

    return Step(train_step, n_params, 3.0 * flops, train_check, clear_grads)


def _build_model_step(cell: Cell, device: torch.device, dtype: torch.dtype) -> Step:
    from zoo.models import Encoder

    m = cell.model or {}
    vocab, classes, ffn = int(m.get("vocab", 512)), int(m.get("classes", 2)), int(m.get("ffn", 128))
    overrides = {k: v for k, v in cell.config.items() if k not in ("dim", "heads")}
    model = Encoder(
        mixer=cell.mixer, depth=cell.depth or 2, dim=cell.dim, heads=cell.heads, vocab=vocab, classes=classes,
        ffn=ffn, max_len=cell.T, mixer_overrides=overrides, device=device, dtype=dtype,
        dropout=float(m.get("dropout", 0.0)),
    )
    B, T, D = cell.batch, cell.T, cell.dim
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, vocab, (B, T), generator=gen, device=device)  # (B, T)
    labels = torch.randint(0, classes, (B,), generator=gen, device=device)  # (B,)
    flops = 2.0 * B * D * classes
    for block, T_l in zip(model.blocks, model.lengths(T)):
        T_next = block.mixer.out_len(T_l)
        flops += _spec_flops(block.mixer.spec, block.mixer.config, B, T_l, cell.causal) + 4.0 * B * T_next * D * ffn
    n_params = sum(p.numel() for p in model.parameters())
    causal = cell.causal

    if cell.mode == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                return model(tokens, causal=causal)  # (B, classes)

        return Step(step, n_params, flops, lambda y: _check_tensor("logits", y, (B, classes)))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(tokens, labels, causal=causal)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return Step(train_step, n_params, 3.0 * flops, lambda loss: _check_tensor("loss", loss, ()),
                lambda: optimizer.zero_grad(set_to_none=True))


def load_builder(ref: str | None) -> Callable[[Cell, torch.device, torch.dtype], Step]:
    """``None`` -> :func:`build_step`; ``"pkg.module:function"`` or ``"path/file.py:function"``."""
    if not ref:
        return build_step
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).resolve()
        mod_name = f"_zoo_builder_{path.stem}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


# --------------------------------------------------------------------------- tensor tracker
class LiveTensorTracker(TorchDispatchMode):
    """Peak of live tensor-storage bytes allocated while active (``PROFILING.md`` 5.5).

    Every op output whose storage is new (not one of the op's inputs' storages) is counted until
    its storage is freed (weakref finaliser); views and in-place results of tracked storages
    update the size only, storages that existed before the tracker are never counted. Eager
    only: compiled or higher-order-op paths raise, and the runner falls back to RSS alone.
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


SDPA_BACKENDS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def sdpa_backend(ops: set[str]) -> str | None:
    names = sorted({SDPA_BACKENDS[o] for o in ops if o in SDPA_BACKENDS})
    return ",".join(names) or None


# --------------------------------------------------------------------------- FLOP formulas
def _fft_flops(numel: int, shape: tuple, dims, factor: float) -> int:
    n = 1
    for d in dims:
        n *= int(shape[d])
    return int(factor * numel * math.log2(n)) if n > 1 else 0


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def extra_flop_formulas() -> dict:
    """``FlopCounterMode(custom_mapping=...)`` entries for ops torch does not count.

    FFTs use the usual radix-2 count: 5 N log2 N per complex length-N transform (over the
    transformed dims jointly), half that for real-input or real-output transforms. CPU flash SDPA
    counts as torch counts the CUDA kernels (2 matmuls forward, 5 backward incl. recompute),
    halved when ``is_causal``.
    """
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def r2c(self_shape, dim, *args, out_shape=None, **kwargs):
        return _fft_flops(_prod(self_shape), self_shape, dim, 2.5)

    def c2c(self_shape, dim, *args, out_shape=None, **kwargs):
        return _fft_flops(_prod(self_shape), self_shape, dim, 5.0)

    def c2r(self_shape, dim, *args, out_shape=None, **kwargs):
        return _fft_flops(_prod(out_shape), out_shape, dim, 2.5)

    def sdpa_cpu(q, k, v, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs):
        flops = sdpa_flop_count(q, k, v)
        return flops // 2 if is_causal else flops

    def sdpa_cpu_backward(grad_out, q, k, v, out, lse, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs):
        flops = sdpa_backward_flop_count(grad_out, q, k, v)
        return flops // 2 if is_causal else flops

    table = {
        aten._fft_r2c: r2c,
        aten._fft_c2c: c2c,
        aten._fft_c2r: c2r,
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_cpu_backward,
    }
    return table


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` by torch's counter plus :func:`extra_flop_formulas`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())
    with counter:
        fn()
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- clocks and memory
def _status_bytes(key: str) -> int | None:
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


def summarise_samples(samples: list[float]) -> dict[str, Any]:
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


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
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
) -> list[float]:
    """Seconds per call, one sample per *block* of calls, until IQR/median <= TARGET_IQR (>=
    STABLE_REPS samples) or the budget is spent (>= min_reps samples). Raises CellTimeout past
    ``deadline`` (``time.monotonic()`` seconds).

    A block is as many back-to-back calls as last >= ``min_block_s`` (one call when a call is
    that long already), as ``torch.utils.benchmark``'s blocked_autorange does: a millisecond
    call's jitter averages out inside its block, so the IQR rule converges instead of burning the
    budget. The median of up to 3 single calls sizes the block; calls that long already are the
    first samples.
    ``info`` (a dict) receives ``block``, the calls per sample.
    """
    import numpy as np

    device = torch.device(device)
    clock = _timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    samples: list[float] = []
    start = time.perf_counter()
    # size the block from the median of up to 3 single calls (a fresh process's first call is
    # often cold: sized from it alone, blocks come out short and their means noisy)
    probes = [clock(fn)]
    while len(probes) < 3 and probes[-1] < min_block_s:
        probes.append(clock(fn))
    per_call = float(np.median(probes))
    block = 1 if per_call >= min_block_s else int(min(MAX_BLOCK, math.ceil(min_block_s / max(per_call, 1e-7))))
    if block == 1:
        samples.extend(probes)
    if info is not None:
        info["block"] = block

    def run_block():
        for _ in range(block):
            fn()

    while True:
        n, spent = len(samples), time.perf_counter() - start
        if n >= max_reps:
            break
        if n >= min_reps and spent >= budget_s:
            break
        if n >= STABLE_REPS:
            q25, q50, q75 = np.percentile(samples, [25, 50, 75])
            if q50 > 0 and (q75 - q25) / q50 <= TARGET_IQR:
                break
        if deadline is not None and time.monotonic() > deadline:
            raise CellTimeout(f"deadline passed after {n} timed samples", samples)
        samples.append(clock(run_block) / block)
    return samples


def _warm_tracker() -> None:
    """Enter a dispatch mode once: its first use imports and caches Python code (tens of MiB of
    resident memory) that must not be charged to the measured step."""
    with LiveTensorTracker():
        (torch.ones(4) * 2).sum()


def _memory_pass_cpu(fn: Callable[[], Any], track: bool, reset: Callable[[], None] | None = None) -> dict[str, Any]:
    tracker = None
    if track:
        _warm_tracker()
    if reset is not None:
        reset()
    gc.collect()
    release_heap()  # freed pages back to the kernel: the next peak counts from scratch
    base = _status_bytes("VmRSS")
    resettable = base is not None and _reset_hwm()
    if track:
        tracker = LiveTensorTracker()
        try:
            with tracker:
                out = fn()
        except Exception as exc:  # the tracker cannot follow this path (HOPs, compile)
            if is_oom(exc):
                raise
            tracker = None
            if reset is not None:
                reset()
            gc.collect()
            release_heap()
            base = _status_bytes("VmRSS")
            resettable = base is not None and _reset_hwm()
            out = fn()
    else:
        out = fn()
    del out
    result: dict[str, Any] = {}
    if resettable:
        hwm = _status_bytes("VmHWM") or 0
        result.update(mem_peak_bytes=max(0, hwm - base), mem_abs_peak_bytes=hwm, mem_method="vmhwm")
    else:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(mem_peak_bytes=max(0, maxrss - (base or 0)), mem_abs_peak_bytes=maxrss, mem_method="ru_maxrss")
    if tracker is not None:
        tensor_peak = tracker.window_peak
        result["mem_tensor_peak_bytes"] = tensor_peak
        rss = result["mem_peak_bytes"]
        big = max(tensor_peak, rss)
        result["mem_disagree"] = bool(big >= DISAGREE_MEMORY_FLOOR and abs(tensor_peak - rss) > DISAGREE_MEMORY * big)
        result["_ops"] = sorted(tracker.ops)
    return result


def _memory_pass_cuda(fn: Callable[[], Any], device: torch.device, reset: Callable[[], None] | None = None) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- failures
def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(s in text for s in ("can't allocate memory", "Cannot allocate memory", "out of memory", "CUDA out of memory"))
    return False


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, one-line reason): CellTimeout -> timeout, OOMs -> oom, a ZooError raised by the
    mixer (it refuses this dtype/device/config) -> unsupported, anything else -> error."""
    if isinstance(exc, CellTimeout):
        return "timeout", f"timed out ({exc.args[0]})" if exc.args else "timed out"
    if is_oom(exc):
        return "oom", _one_line(exc)
    if isinstance(exc, ZooError):
        return "unsupported", _one_line(exc)
    return "error", _one_line(exc)


def format_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- one cell
def _fake_pass(cell: Cell, builder, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Predicted peaks and counted FLOPs with fake tensors (no compute, no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    with FakeTensorMode():
        tracker = LiveTensorTracker()
        with tracker:
            step = builder(cell, device, dtype)
            before = tracker.current
            tracker.mark()
            counter = FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())
            with counter:
                out = step.fn()
            del out
            step_peak = tracker.window_peak
            abs_peak = before + step_peak
    return {
        "mem_predicted_bytes": int(step_peak),
        "_predicted_abs": int(abs_peak),
        "flops_counted": float(counter.get_total_flops()),
        "_ops": sorted(tracker.ops),
    }


def warm_fake_mode() -> None:
    """One fake training step of a tiny registered mixer: no compute, no thread pool (the zygote
    calls this so every forked cell starts with the fake-tensor machinery loaded)."""
    from zoo.registry import get_config, list_mixers

    name = "softmax" if "softmax" in list_mixers() else list_mixers()[0]
    config = dataclasses.asdict(get_config(name, dim=16, heads=2))
    cell = Cell(label=name, mixer=name, overrides={}, config=config, scope="mixer", mode="train", T=8, batch=1,
                dim=16, heads=2, depth=None, dtype="fp32", device="cpu")
    _fake_pass(cell, build_step, torch.device("cpu"), torch.float32)


def _set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    return torch.get_num_threads()


def measure_cell(cell: Cell, opts: dict[str, Any], emit: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the protocol for one cell; returns the measured fields plus ``status``/``reason``.

    ``opts``: threads, time_budget_s, timeout_s (checked between calls), memory_budget_bytes,
    predict (bool), count_flops (bool), fallback_predicted_abs (bytes or None), builder (reference or None).
    ``emit`` receives partial results as they become known (kept if the cell is later killed).
    """
    result: dict[str, Any] = {}
    managed = False

    def note(**fields):
        result.update(fields)
        if emit is not None:
            emit({k: v for k, v in fields.items() if not k.startswith("_")})

    timeout = opts.get("timeout_s")
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    phases: dict[str, float] = {}
    result["phase_s"] = phases  # seconds per protocol phase (where a cell's wall time goes)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 4)
        clock = now

    try:
        device = torch.device(cell.device)
        dtype = torch_dtype(cell.dtype)
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        threads = _set_threads(opts.get("threads"))
        note(threads=threads, compute_dtype=cell.dtype, checkpointing=False)
        cpu_heap = opts.get("cpu_heap") or "managed"
        if cpu_heap not in CPU_HEAP_CHOICES:
            raise ValueError(f"cpu_heap: expected one of {', '.join(CPU_HEAP_CHOICES)}, got {cpu_heap!r}")
        managed = device.type == "cpu" and cpu_heap == "managed"
        memory_heap = set_heap_mode("tracking") if managed else "system"
        torch.manual_seed(0)
        builder = load_builder(opts.get("builder"))
        budget = opts.get("memory_budget_bytes")

        predicted_abs = None
        if opts.get("predict", True):
            try:
                fake = _fake_pass(cell, builder, device, dtype)
            except Exception as exc:  # data-dependent shapes etc.: no prediction from fake tensors
                if is_oom(exc):
                    raise
                fake = None
                result["_predict_error"] = _one_line(exc)
            if fake is not None:
                predicted_abs = fake["_predicted_abs"]
                result["_ops"] = fake["_ops"]
                note(mem_predicted_bytes=fake["mem_predicted_bytes"], flops_counted=fake["flops_counted"],
                     sdpa_backend=sdpa_backend(set(fake["_ops"])))
            lap("predict")
        if predicted_abs is None and opts.get("fallback_predicted_abs"):
            predicted_abs = int(opts["fallback_predicted_abs"])
            note(mem_predicted_bytes=int(opts.get("fallback_predicted_step") or predicted_abs))
        if budget and predicted_abs is not None and predicted_abs > budget:
            note(status="oom", inferred=True,
                 reason=f"predicted peak {format_bytes(predicted_abs)} > budget {format_bytes(budget)}")
            return result

        step = builder(cell, device, dtype)
        note(params=int(step.params), flops_analytic=step.flops_analytic)
        lap("build")

        # call 1: warm-up + check (under the FLOP counter when the fake pass could not count);
        # call 2: the memory pass (also a warm-up call)
        warm_start = time.perf_counter()
        if result.get("flops_counted") is None and opts.get("count_flops", True):
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())
            with counter:
                out = step.fn()
            note(flops_counted=float(counter.get_total_flops()))
        else:
            out = step.fn()
        if step.check is not None:
            step.check(out)
        del out
        if result.get("flops_counted") is not None and step.flops_analytic:
            a, c = step.flops_analytic, result["flops_counted"]
            note(flops_disagree=bool(c <= 0 or max(a, c) / max(min(a, c), 1.0) > DISAGREE_FLOPS))
        if deadline is not None and time.monotonic() > deadline:
            raise CellTimeout("deadline passed during warm-up")
        lap("first_call")
        if device.type == "cuda":
            mem = _memory_pass_cuda(step.fn, device, step.reset)
        else:
            mem = _memory_pass_cpu(step.fn, track=opts.get("track_tensors", True), reset=step.reset)
        ops = mem.pop("_ops", None)
        if ops and result.get("sdpa_backend") is None:
            mem["sdpa_backend"] = sdpa_backend(set(ops))
        note(**mem)
        lap("memory")
        timing_heap = "system"
        if managed:
            # the caching heap keeps freed blocks (up to ~3x the step's peak measured), so a step
            # that large relative to the memory budget is timed in the tracking heap instead
            step_peak = mem.get("mem_peak_bytes") or 0
            fits = not budget or CACHING_HEAP_FOOTPRINT * step_peak <= budget
            timing_heap = set_heap_mode("caching" if fits else "tracking")

        def warm_up_and_time(calls: int) -> list[float]:
            # >= WARMUP_CALLS calls and >= WARMUP_SECONDS in all, and >= 1 call in the timing heap
            # (the caching heap faults its pages in on its first call)
            in_heap = 0
            while calls < WARMUP_CALLS or time.perf_counter() - warm_start < WARMUP_SECONDS or (managed and in_heap < 1):
                step.fn()
                calls += 1
                in_heap += 1
                if deadline is not None and time.monotonic() > deadline:
                    raise CellTimeout("deadline passed during warm-up")
            note(warmup_calls=calls, warmup_s=time.perf_counter() - warm_start)
            lap("warmup")
            info: dict[str, Any] = {}
            out = time_calls(step.fn, device=device, budget_s=float(opts.get("time_budget_s", 2.0)), deadline=deadline,
                             info=info)
            note(time_block=info.get("block"))
            lap("timing")
            return out

        retry = False
        try:
            samples = warm_up_and_time(2)
        except Exception as exc:
            # the caching heap's footprint exceeded the memory limit after all: time again in the
            # tracking heap (recorded). Outside this block, so the traceback no longer holds the
            # failed call's frames and their tensors.
            if not (is_oom(exc) and timing_heap == "caching"):
                raise
            retry = True
        if retry:
            gc.collect()
            timing_heap = set_heap_mode("tracking")
            release_heap()
            samples = warm_up_and_time(0)
        if device.type == "cpu":
            note(cpu_heap={"memory": memory_heap, "timing": timing_heap})
        note(**summarise_samples(samples), status="ok", reason=None, inferred=False)
        return result
    except CellTimeout as exc:
        if len(exc.args) > 1 and exc.args[1]:  # raw samples only: a timed-out cell has no median
            note(time_samples=[float(t) for t in exc.args[1]])
        status, reason = classify_exception(exc)
    except Exception as exc:  # classified into the record: a failing mixer never stops a sweep
        status, reason = classify_exception(exc)
    finally:
        if managed:  # leave an in-process caller's heap as the memory pass expects it, and small
            set_heap_mode("tracking")
            release_heap()
    note(status=status, reason=reason, inferred=False)
    return result

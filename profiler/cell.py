"""One cell's protocol (``PROFILING.md`` 5.1-5.6), run inside the cell's (isolated) process.

1. threads set explicitly, denormals flushed, seeds fixed; on CUDA the memory budget is the
   allocator's cap (:func:`profiler.memory.set_cuda_memory_limit`);
2. a *fake pass*: the builder runs under ``FakeTensorMode`` (shapes only) with the live-tensor
   tracker and the FLOP counter: the predicted peak (a cell that cannot fit the budget becomes
   ``oom``, inferred, without running) and the counted FLOPs. Mixers with data-dependent shapes
   cannot run fake: their prediction comes from the sweep's extrapolation of shorter lengths;
3. the real step is built (outside every timed region); the *first call* (counted FLOPs if the
   fake pass could not count them, the SDPA backend if it could not see it) is checked: a red
   check is ``error``, never a number;
4. the memory pass (:mod:`profiler.memory`), in the tracking heap on CPU;
5. warm-up (>= 2 calls after the first and >= 0.2 s) and timed calls (:mod:`profiler.timing`), in
   the caching heap on CPU when 3x the step's peak fits the budget.

A compiled cell (``cell.compile``): the fake pass and the FLOP count are those of the eager step
(the same math); the first call's time, compilation included, is ``compile_s``; frames compiled
after it (recompilations during the memory pass, warm-up or timing) are ``recompiles``.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Callable

import torch

from profiler.affinity import pin_quietest, restore
from profiler.builders import Step, build_step, load_builder, load_ref, torch_dtype
from profiler.cases import Cell
from profiler.flops import FlopTally, SdpaRecorder, flop_counter, sdpa_backend
from profiler.heap import CPU_HEAP_CHOICES, release_heap, set_heap_mode
from profiler.memory import is_oom, memory_pass_cpu, memory_pass_cuda, set_cuda_memory_limit, traced_step
from profiler.timing import MIN_REPS, WARMUP_SECONDS, CellTimeout, summarise_samples, time_calls, warm_up
from reports.metrics import format_bytes

__all__ = ["measure_cell", "classify_exception", "warm_fake_mode", "one_line"]

CACHING_HEAP_FOOTPRINT = 3.0  # the caching heap's footprint, worst seen: 2.9x the step's peak (linformer train, 16k)
DISAGREE_FLOPS = 2.0


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, one-line reason): CellTimeout -> timeout, an allocator error -> oom, anything else
    -> error with the exception's text. ``unsupported`` is never decided here: only a spec
    declares it, while the sweep is planned."""
    if isinstance(exc, CellTimeout):
        return "timeout", f"timed out ({exc.args[0]})" if exc.args else "timed out"
    if is_oom(exc):
        return "oom", one_line(exc)
    return "error", one_line(exc)


def _fake_pass(cell: Cell, builder, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Predicted peaks and counted FLOPs with fake tensors (no compute, no memory): one dispatch
    mode, the live-tensor tracker counting FLOPs as it goes (``FlopCounterMode``'s formulas)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    tally = FlopTally()
    with FakeTensorMode():
        before, step_peak, ops = traced_step(lambda: builder(cell, device, dtype), tally)
    return {"mem_predicted_bytes": int(step_peak), "_predicted_abs": int(before + step_peak),
            "flops_counted": tally.flops, "_ops": sorted(ops)}


def warm_fake_mode() -> None:
    """One fake training step of a tiny registered mixer: no compute, no thread pool (the zygote
    calls this so every forked cell starts with the fake-tensor machinery loaded)."""
    from zoo.registry import get_config, list_mixers

    name = "softmax" if "softmax" in list_mixers() else list_mixers()[0]
    config = dataclasses.asdict(get_config(name, dim=16, heads=2))
    cell = Cell(label=name, mixer=name, overrides={}, config=config, scope="mixer", mode="train", T=8, batch=1,
                dim=16, heads=2, depth=None, dtype="fp32", device="cpu")
    _fake_pass(cell, build_step, torch.device("cpu"), torch.float32)


class _Run:
    """The state of one cell's measurement: the result so far, the deadline, phase times."""

    def __init__(self, cell: Cell, opts: dict[str, Any], emit: Callable[[dict], None] | None):
        self.cell, self.opts, self.emit = cell, opts, emit
        self.result: dict[str, Any] = {"phase_s": {}}  # seconds per protocol phase
        timeout = opts.get("timeout_s")
        self.deadline = None if timeout is None else time.monotonic() + float(timeout)
        self.budget = opts.get("memory_budget_bytes")
        self.previous_cpus: frozenset[int] | None = None  # the affinity mask before pinning, if pinned
        self._clock = time.perf_counter()

    def note(self, **fields: Any) -> None:
        self.result.update(fields)
        if self.emit is not None:
            self.emit({k: v for k, v in fields.items() if not k.startswith("_")})

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.result["phase_s"][name] = round(now - self._clock, 4)
        self._clock = now

    def check_deadline(self, where: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CellTimeout(f"deadline passed during {where}")


def _set_up(run: _Run, device: torch.device) -> tuple[bool, str]:
    """Threads, device, heap and (CUDA) memory cap; returns (heap managed?, memory-pass heap)."""
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        fraction = set_cuda_memory_limit(run.budget, device)
        if fraction is not None:
            run.note(cuda_memory_fraction=round(fraction, 6))
    if run.opts.get("threads"):
        torch.set_num_threads(int(run.opts["threads"]))
    # the probe's cores are then exactly the cell's; a cell that times nothing (round 1 of an
    # interleaved sweep, maybe beside another: profiler.side_by_side) stays where the scheduler puts it
    if device.type == "cpu" and run.opts.get("probe") and not run.opts.get("untimed"):
        pinned = pin_quietest(torch.get_num_threads())
        run.previous_cpus = None if pinned is None else pinned[1]
        run.note(cpus=None if pinned is None else pinned[0])
    torch.set_flush_denormal(True)
    run.note(threads=torch.get_num_threads(), compute_dtype=run.cell.dtype, checkpointing=False)
    cpu_heap = run.opts.get("cpu_heap") or "managed"
    if cpu_heap not in CPU_HEAP_CHOICES:
        raise ValueError(f"cpu_heap: expected one of {', '.join(CPU_HEAP_CHOICES)}, got {cpu_heap!r}")
    managed = device.type == "cpu" and cpu_heap == "managed"
    torch.manual_seed(0)
    return managed, set_heap_mode("tracking") if managed else "system"


def _predict(run: _Run, builder, device: torch.device, dtype: torch.dtype) -> bool:
    """The fake pass and the budget gate; True when the cell is predicted not to fit."""
    predicted_abs = None
    if run.opts.get("predict", True):
        try:
            # a compiled step is predicted and counted as its eager self (the same math)
            fake = _fake_pass(dataclasses.replace(run.cell, compile=None), builder, device, dtype)
        except Exception as exc:  # data-dependent shapes etc.: no prediction from fake tensors
            if is_oom(exc):
                raise
            fake = None
            run.result["_predict_error"] = one_line(exc)
        if fake is not None:
            predicted_abs = fake["_predicted_abs"]
            run.result["_fake_peak"] = fake["mem_predicted_bytes"]  # the memory pass's tensor peak (same tracker)
            run.note(mem_predicted_bytes=fake["mem_predicted_bytes"], flops_counted=fake["flops_counted"],
                     sdpa_backend=sdpa_backend(set(fake["_ops"])))
        run.lap("predict")
    if predicted_abs is None and run.opts.get("fallback_predicted_abs"):
        predicted_abs = int(run.opts["fallback_predicted_abs"])
        run.note(mem_predicted_bytes=int(run.opts.get("fallback_predicted_step") or predicted_abs))
    if run.budget and predicted_abs is not None and predicted_abs > run.budget:
        run.note(status="oom", inferred=True,
                 reason=f"predicted peak {format_bytes(predicted_abs)} > budget {format_bytes(run.budget)}")
        return True
    return False


def _first_call(run: _Run, step: Step, device: torch.device) -> None:
    """Call 1: set-up (and compilation) and check, under the FLOP counter / SDPA recorder for what
    is still unknown (never around a compiled step: a dispatch mode would be compiled in)."""
    eager = not run.cell.compile
    watch = eager and not run.opts.get("timing_only")  # a later round counts nothing
    count = watch and run.result.get("flops_counted") is None and run.opts.get("count_flops", True)
    counter = flop_counter() if count else None
    recorder = SdpaRecorder() if watch and run.result.get("sdpa_backend") is None else None
    t0 = time.perf_counter()
    with recorder if recorder is not None else _nothing(), counter if counter is not None else _nothing():
        out = step.fn()
    if not eager:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        run.note(compile_s=time.perf_counter() - t0)  # compilation + one call, apart from the steady state
    if counter is not None:
        run.note(flops_counted=float(counter.get_total_flops()))
    if recorder is not None and recorder.ops:
        run.note(sdpa_backend=sdpa_backend(recorder.ops))
    if step.check is not None:
        step.check(out)
    del out
    if run.result.get("flops_counted") is not None and step.flops_analytic:
        a, c = step.flops_analytic, run.result["flops_counted"]
        run.note(flops_disagree=bool(c <= 0 or max(a, c) / max(min(a, c), 1.0) > DISAGREE_FLOPS))
    run.check_deadline("the first call")
    run.lap("first_call")


def _compiled_frames() -> int:
    """Frames torch.compile has compiled in this process so far (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _memory(run: _Run, step: Step, device: torch.device) -> None:
    if device.type == "cuda":
        mem = memory_pass_cuda(step.fn, device, step.reset)
    else:
        # compiled kernels bypass the dispatcher the tensor tracker watches: RSS alone
        track = run.opts.get("track_tensors", True) and not run.cell.compile
        mem = memory_pass_cpu(step.fn, track=track, reset=step.reset, tensor_peak=run.result.get("_fake_peak"))
    ops = mem.pop("_ops", None)
    if ops and run.result.get("sdpa_backend") is None:
        mem["sdpa_backend"] = sdpa_backend(set(ops))
    run.note(**mem)
    run.lap("memory")


def _timed(run: _Run, step: Step, device: torch.device, calls: int, since: float | None, in_heap: int) -> list[float]:
    """Warm-up (``calls`` made after the first since ``since``), then the timed samples."""
    n, seconds = warm_up(step.fn, device=device, calls=calls, since=since, at_least=in_heap, deadline=run.deadline,
                         min_seconds=float(run.opts.get("warmup_min_s", WARMUP_SECONDS)))
    run.note(warmup_calls=n, warmup_s=seconds)
    run.lap("warmup")
    samples = probed_samples(run, step.fn, device, float(run.opts.get("time_budget_s", 2.0)))
    run.lap("timing")
    return samples


def probed_samples(run: _Run, fn: Callable[[], Any], device: torch.device, budget: float,
                   min_reps: int = MIN_REPS) -> list[float]:
    """:func:`profiler.timing.time_calls` under the cell's load probe (a fresh one per call);
    notes ``time_block`` and the contention fields of these samples."""
    info: dict[str, Any] = {}
    probe = load_ref(run.opts["probe"])() if run.opts.get("probe") else None
    samples = time_calls(fn, device=device, budget_s=budget, deadline=run.deadline, info=info, probe=probe,
                         min_reps=min_reps)
    note_contention(run, info, probe)
    return samples


def note_contention(run: _Run, info: dict[str, Any], probe) -> None:
    """The block size and, with a load probe, the contention fields of a cell's samples."""
    run.note(time_block=info.get("block"))
    if probe is not None:
        run.note(contended_samples=info.get("contended_samples"), other_cpu=info.get("other_cpu"),
                 contended=info.get("contended"))
        extra = probe.summary() if callable(getattr(probe, "summary", None)) else {}
        run.note(**{k: extra.get(k) for k in ("steal_cpu", "run_wait", "quiet_wait_s", "neighbour_cpu", "neighbours")
                    if k in extra})


def _time_in_heap(run: _Run, step: Step, device: torch.device, managed: bool, since: float) -> tuple[list[float], str]:
    """Timing in the caching heap when it fits (else the tracking heap); one retry in the tracking
    heap after an OOM in the caching heap. Returns (samples, timing heap)."""
    heap = "system"
    if managed:
        # the caching heap keeps freed blocks (up to ~3x the step's measured peak)
        peak = run.result.get("mem_peak_bytes") or run.opts.get("known_peak_bytes") or 0  # known: round 1's
        fits = not run.budget or CACHING_HEAP_FOOTPRINT * peak <= run.budget
        heap = set_heap_mode("caching" if fits else "tracking")
    try:
        return _timed(run, step, device, 1, since, 1 if managed else 0), heap
    except Exception as exc:
        if not (is_oom(exc) and heap == "caching"):
            raise
    # outside the except block, so the traceback no longer holds the failed call's tensors
    gc.collect()
    heap = set_heap_mode("tracking")
    release_heap()
    return _timed(run, step, device, 0, None, 1), heap


def measure_cell(cell: Cell, opts: dict[str, Any], emit: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the protocol for one cell; returns the measured fields plus ``status``/``reason``.

    ``opts``: threads, time_budget_s, timeout_s (checked between calls), memory_budget_bytes,
    predict, count_flops, track_tensors (bools), fallback_predicted_abs/_step (bytes),
    builder (reference or None), cpu_heap, probe (reference to a load-probe factory or None),
    timing_only (a later round: no fake pass, memory pass or FLOP count), untimed (an interleaved
    sweep's round 1: everything but the timing, which the interleaved pass takes), warmup_min_s (the
    warm-up's minimum seconds) and known_peak_bytes (round 1's measured peak, for the timing heap's
    choice).
    ``emit`` receives partial results as they become known (kept if the cell is later killed).
    """
    if opts.get("group"):  # an interleaved timing pass over several cells (profiler.interleave)
        from profiler.interleave import measure_group

        return measure_group([cell, *(Cell.from_dict(d) for d in opts["group"])], opts)
    run = _Run(cell, opts, emit)
    managed = False
    try:
        device, dtype = torch.device(cell.device), torch_dtype(cell.dtype)
        managed, memory_heap = _set_up(run, device)
        if cell.mode == "decode":  # generation through the state API: its own protocol
            from profiler.decode import measure_decode

            measure_decode(run, device, dtype, managed)
            return run.result
        builder = load_builder(opts.get("builder"))
        timing_only = bool(opts.get("timing_only"))  # a later round (profiler.rounds): no fake or memory pass
        if not timing_only and _predict(run, builder, device, dtype):
            return run.result
        step = builder(cell, device, dtype)
        run.note(params=int(step.params), flops_analytic=step.flops_analytic)
        run.lap("build")
        _first_call(run, step, device)
        since = time.perf_counter()  # warm-up counts the calls after the first one
        frames = _compiled_frames()
        if not timing_only:
            _memory(run, step, device)
        if opts.get("untimed"):  # an interleaved sweep's round 1: the pass times it (profiler.interleave)
            if device.type == "cpu":
                run.note(cpu_heap={"memory": memory_heap, "timing": None})
            run.note(status="ok", reason=None, inferred=False)
            return run.result
        samples, timing_heap = _time_in_heap(run, step, device, managed, since)
        if cell.compile:  # a recompilation after the first call is compile time inside the numbers
            run.note(recompiles=_compiled_frames() - frames)
        if device.type == "cpu":
            run.note(cpu_heap={"memory": memory_heap, "timing": timing_heap})
        run.note(**summarise_samples(samples), status="ok", reason=None, inferred=False)
        return run.result
    except CellTimeout as exc:
        if len(exc.args) > 1 and exc.args[1]:  # raw samples only: a timed-out cell has no median
            run.note(time_samples=[float(t) for t in exc.args[1]])
        status, reason = classify_exception(exc)
    except Exception as exc:  # classified into the record: a failing mixer never stops a sweep
        status, reason = classify_exception(exc)
    finally:
        if managed:  # leave an in-process caller's heap as the memory pass expects it, and small
            set_heap_mode("tracking")
            release_heap()
        restore(run.previous_cpus)  # an in-process caller keeps its own affinity
    run.note(status=status, reason=reason, inferred=False)
    return run.result

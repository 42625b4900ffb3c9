"""Cell processes: what a child does, and how its supervisor reads the way it ended.

A child sets its limits, runs :func:`profiler.cell.measure_cell` and streams JSON lines
(``{"partial": ...}`` as fields become known, ``{"final": ...}`` at the end) through a pipe. Its
supervisor (the zygote for forked children, this process for spawned ones) enforces the cell
timeout and classifies an ending without a result by what it *saw*:

* killed by the supervisor at the deadline -> ``timeout``;
* SIGKILL with the child's peak resident memory at the budget (>= :data:`OOM_RSS_FRACTION` of it)
  -> ``oom`` (the kernel's OOM killer, with that evidence in the reason);
* any other SIGKILL -> ``killed`` (signal and peak memory recorded; longer lengths still run);
* another signal or a non-zero exit -> ``error`` with the signal or code and the last line the
  child printed.

Whatever a child reported before dying (memory, FLOPs) is kept.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import tempfile
import time
from typing import Any, Callable

from profiler.cases import Cell

__all__ = ["cell_body", "supervise", "run_forked", "zygote_main", "spawn_main", "grace", "OOM_RSS_FRACTION"]

KILL_GRACE = 5.0  # the child checks its own deadline between calls; the hard kill comes this much later
OOM_RSS_FRACTION = 0.9  # a SIGKILLed child this close to the memory budget counts as the OOM killer's


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies (no orphaned measurement keeps running)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def grace(timeout: float) -> float:
    return min(KILL_GRACE, max(0.5, 0.25 * timeout))


def cell_body(request: dict[str, Any], result_fd: int) -> None:
    """What a cell process does: limits, measure, stream results as JSON lines to ``result_fd``."""
    from profiler.cell import measure_cell
    from profiler.memory import set_memory_limit

    out = os.fdopen(result_fd, "w", buffering=1)

    def emit(fields: dict) -> None:
        out.write(json.dumps({"partial": fields}, default=str) + "\n")

    cell = Cell.from_dict(request["cell"])
    opts = request["opts"]
    if not cell.device.startswith("cuda"):  # CUDA cells cap the allocator inside measure_cell
        set_memory_limit(opts.get("memory_budget_bytes"), opts.get("threads"))
    result = measure_cell(cell, opts, emit)
    out.write(json.dumps({"final": {k: v for k, v in result.items() if not k.startswith("_")}}, default=str) + "\n")
    out.flush()


def _child_entry(request: dict[str, Any], result_fd: int, log_fd: int) -> None:
    """Entry of a forked child (never returns)."""
    code = 0
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        die_with_parent()
        cell_body(request, result_fd)
    except BaseException:  # reported through the exit code and the log's last line
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def _log_tail(log) -> str:
    try:
        log.seek(0)
        lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    except (OSError, ValueError):
        return ""
    return lines[-1][:300] if lines else ""


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _read_messages(fd: int, deadline: float | None, kill: Callable[[], None]) -> tuple[dict, dict | None, bool]:
    """(partial fields, final result or None, killed at the deadline?) from a child's pipe."""
    buf, partial, final = b"", {}, None
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            kill()
            return partial, final, True
        ready, _, _ = select.select([fd], [], [], 1.0 if remaining is None else min(1.0, remaining))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return partial, final, False
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "partial" in msg:
                partial.update(msg["partial"])
            elif "final" in msg:
                final = msg["final"]


def classify_ending(code: int, peak_rss: int | None, budget: int | None, tail: str) -> dict[str, Any]:
    """Status fields for a child that ended without a result (``code``: negative for a signal)."""
    last = f"; last output: {tail}" if tail else ""
    from reports.metrics import format_bytes

    if code < 0:
        sig = _signal_name(-code)
        seen = {"signal": sig, "rss_peak_bytes": peak_rss}
        at_budget = bool(budget and peak_rss and peak_rss >= OOM_RSS_FRACTION * budget)
        rss = f"peak RSS {format_bytes(peak_rss)}" if peak_rss else "peak RSS unknown"
        if code == -signal.SIGKILL and at_budget:
            return {**seen, "status": "oom", "reason": f"killed by SIGKILL at {rss}, the budget being "
                    f"{format_bytes(budget)} (the kernel's OOM killer){last}"}
        if code == -signal.SIGKILL:
            return {**seen, "status": "killed", "reason": f"killed by SIGKILL without a result ({rss}){last}"}
        return {**seen, "status": "error", "reason": f"crashed: killed by {sig} ({rss}){last}"}
    if code != 0:
        return {"status": "error", "reason": f"crashed: exit code {code}{last}"}
    return {"status": "error", "reason": f"the cell process ended without a result{last}"}


def supervise(fd: int, timeout: float | None, kill: Callable[[], None], wait: Callable[[], tuple[int, int | None]],
              log, *, budget: int | None = None, allowance: float = 0.0) -> dict[str, Any]:
    """Read a child's JSON lines until EOF or the hard deadline (``timeout`` + grace +
    ``allowance``, e.g. an interpreter's start-up); classify how it ended.

    ``wait()`` returns (exit code, negative for a signal as ``subprocess`` does; peak RSS bytes).
    """
    deadline = None if timeout is None else time.monotonic() + timeout + grace(timeout) + allowance
    partial, final, killed = _read_messages(fd, deadline, kill)
    os.close(fd)
    code, peak_rss = wait()
    if killed:
        return {**partial, "status": "timeout", "inferred": False,
                "reason": f"exceeded the {timeout:g} s cell timeout (killed)"}
    if final is not None and code == 0:
        return final
    return {**partial, **classify_ending(code, peak_rss, budget, _log_tail(log)), "inferred": False}


def wait_rusage(pid: int) -> tuple[int, int | None]:
    """(exit code, peak RSS in bytes) of a child, from ``wait4``."""
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), int(usage.ru_maxrss) * 1024


def run_forked(request: dict[str, Any]) -> dict[str, Any]:
    """Fork one child for one cell and supervise it (called inside the zygote)."""
    r, w = os.pipe()
    log = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        _child_entry(request, w, log.fileno())
    os.close(w)

    def kill():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    try:
        return supervise(r, request.get("timeout"), kill, lambda: wait_rusage(pid), log,
                         budget=request["opts"].get("memory_budget_bytes"))
    finally:
        log.close()


def zygote_main() -> None:
    """The zygote: import everything, compute nothing, fork a child per request line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print must never corrupt the protocol
    die_with_parent()
    parent = int(os.environ.get("ZOO_PROFILER_PARENT", "0"))
    if parent and os.getppid() != parent:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    # FakeTensorMode asks torch.cuda.is_available(); by NVML that initialises no CUDA context, so
    # a forked child could still use the GPU (the sweep sends CUDA cells to spawn regardless)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch  # noqa: F401
    import torch._subclasses.fake_tensor  # noqa: F401
    import torch.utils.flop_counter  # noqa: F401

    import profiler.builders
    import profiler.cell
    import zoo.mixers  # noqa: F401
    import zoo.models  # noqa: F401

    for ref in json.loads(os.environ.get("ZOO_PROFILER_PRELOAD", "[]")):
        profiler.builders.load_builder(ref)
    # The first fake-tensor pass of a process costs seconds (lazy imports and caches); pay it
    # here once. Fake tensors compute nothing, so no thread pool starts and forking stays safe.
    try:
        profiler.cell.warm_fake_mode()
    except Exception:  # only a speed-up
        pass
    # Every object imported so far lives as long as the zygote: out of the collector's sight, a
    # child's gc.collect() (the memory pass's baseline) walks only its own objects (0.15 s -> 0.1 ms
    # here, per cell), and collections do not write to pages shared with the zygote
    gc.collect()
    gc.freeze()
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        request = json.loads(line)
        try:
            reply = run_forked(request)
        except Exception as exc:  # fork failed (no memory for the page tables, pid limit)
            reply = {"status": "error", "inferred": False, "reason": f"could not start the cell process: {exc}"}
        proto.write(json.dumps(reply, default=str) + "\n")
    os._exit(0)


def spawn_main() -> None:
    """A fresh interpreter for one cell (CUDA): request on stdin, results to the fd it names."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request = json.loads(sys.stdin.readline())
    cell_body(request, request["result_fd"])

"""The sweep: plan cells, run each in isolation with a timeout and a memory budget, append one
record per cell, infer the OOM frontier, resume, show progress, fit exponents, print a table.

Isolation (``isolate=True``, the default):

* CPU: a *zygote*. One fresh interpreter imports torch, zoo and the profiler but computes
  nothing (so no OpenMP pool exists in it), then ``fork()``s one child per cell. A child starts
  with a clean thread pool, sets its own thread count and memory limit (``RLIMIT_AS``, so a
  failed allocation is a catchable error), runs :func:`profiler.measure.measure_cell` and sends
  its result as JSON lines through a pipe. The ~2 s torch import is paid once, not per cell.
* CUDA: one fresh interpreter per cell (``spawn``), because a process must never fork after
  CUDA is initialised.

The supervisor (zygote or this process) enforces the cell timeout (SIGKILL -> ``timeout``) and
reads the way a child ended: killed by SIGKILL without a result -> ``oom`` (the kernel's OOM
killer); another signal or a non-zero exit -> ``error`` with the signal or code and the last
line the child printed. Whatever a child had reported before dying (memory, FLOPs) is kept.

``isolate=False`` runs cells in this process: faster to start, but the timeout can only be
checked between calls and an allocator that has seen an OOM biases later cells.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from profiler.cases import (
    MODES,
    PRESETS,
    SCOPES,
    Cell,
    canonical_dtype,
    parse_lengths,
    parse_mixers,
    parse_modes,
    parse_size,
    plan_cells,
)
from profiler.heap import CPU_HEAP_CHOICES
from profiler.records import CELL_KEYS, RecordWriter, check_writable, environment, now_iso, read_records
from zoo.errors import ZooValueError

__all__ = ["run_profile", "run_sweep", "resolve_device", "default_memory_budget", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0  # seconds per cell
KILL_GRACE = 5.0  # the child checks its own deadline between calls; the hard kill comes this much later
AS_SLACK = 256 * 2**20  # address-space slack over the budget (thread stacks, malloc arenas)


# =========================================================================== cell processes
def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies (no orphaned measurement keeps running)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _set_memory_limit(budget: int | None, threads: int | None) -> None:
    """RLIMIT_AS = current address space + budget (+ slack): allocations past it fail cleanly."""
    if not budget:
        return
    import resource

    from profiler.measure import _status_bytes

    size = _status_bytes("VmSize")
    if size is None:
        return
    limit = size + int(budget) + AS_SLACK + 80 * 2**20 * max(1, int(threads or 1))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _cell_body(request: dict[str, Any], result_fd: int) -> None:
    """What a cell process does: limits, measure, stream results as JSON lines to ``result_fd``."""
    from profiler.measure import measure_cell

    out = os.fdopen(result_fd, "w", buffering=1)

    def emit(fields: dict) -> None:
        out.write(json.dumps({"partial": fields}, default=str) + "\n")

    cell = Cell.from_dict(request["cell"])
    opts = request["opts"]
    if not cell.device.startswith("cuda"):
        _set_memory_limit(opts.get("memory_budget_bytes"), opts.get("threads"))
    result = measure_cell(cell, opts, emit)
    out.write(json.dumps({"final": {k: v for k, v in result.items() if not k.startswith("_")}}, default=str) + "\n")
    out.flush()


def _child_entry(request: dict[str, Any], result_fd: int, log_fd: int) -> None:
    """Entry of a forked child (never returns)."""
    code = 0
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        _die_with_parent()
        _cell_body(request, result_fd)
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


def _grace(timeout: float) -> float:
    return min(KILL_GRACE, max(0.5, 0.25 * timeout))


def _supervise(
    fd: int, timeout: float | None, kill: Callable[[], None], wait: Callable[[], int], log
) -> dict[str, Any]:
    """Read a child's JSON lines until EOF or the hard deadline; classify how it ended.

    ``wait()`` returns the exit code, negative for a signal (as ``subprocess`` does).
    """
    deadline = None if timeout is None else time.monotonic() + timeout + _grace(timeout)
    buf = b""
    partial: dict[str, Any] = {}
    final = None
    killed = False
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            kill()
            killed = True
            break
        ready, _, _ = select.select([fd], [], [], 1.0 if remaining is None else min(1.0, remaining))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
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
    os.close(fd)
    code = wait()
    if killed:
        out = dict(partial)
        out.update(status="timeout", inferred=False, reason=f"exceeded the {timeout:g} s cell timeout (killed)")
        return out
    if final is not None and code == 0:
        return final
    out = dict(partial)
    tail = _log_tail(log)
    if code == -signal.SIGKILL:
        out.update(status="oom", inferred=False,
                   reason="killed by SIGKILL without a result (the kernel's OOM killer)" + (f"; last output: {tail}" if tail else ""))
    elif code < 0:
        out.update(status="error", inferred=False, reason=f"crashed: killed by {_signal_name(-code)}" + (f"; {tail}" if tail else ""))
    elif code != 0:
        out.update(status="error", inferred=False, reason=f"crashed: exit code {code}" + (f"; {tail}" if tail else ""))
    else:
        out.update(status="error", inferred=False, reason="the cell process ended without a result" + (f"; {tail}" if tail else ""))
    return out


def _run_forked(request: dict[str, Any]) -> dict[str, Any]:
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

    def wait():
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    try:
        return _supervise(r, request.get("timeout"), kill, wait, log)
    finally:
        log.close()


def _zygote_main() -> None:
    """The zygote: import everything, compute nothing, fork a child per request line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print must never corrupt the protocol
    _die_with_parent()
    parent = int(os.environ.get("ZOO_PROFILER_PARENT", "0"))
    if parent and os.getppid() != parent:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    import torch  # noqa: F401
    import torch._subclasses.fake_tensor  # noqa: F401
    import torch.utils.flop_counter  # noqa: F401

    import profiler.measure  # noqa: F401
    import zoo.mixers  # noqa: F401
    import zoo.models  # noqa: F401

    for ref in json.loads(os.environ.get("ZOO_PROFILER_PRELOAD", "[]")):
        profiler.measure.load_builder(ref)
    # The first fake-tensor pass of a process costs seconds (lazy imports and caches); pay it
    # here once. Fake tensors compute nothing, so no thread pool starts and forking stays safe.
    try:
        profiler.measure.warm_fake_mode()
    except Exception:  # only a speed-up
        pass
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        request = json.loads(line)
        try:
            reply = _run_forked(request)
        except Exception as exc:  # fork failed (no memory for the page tables, pid limit)
            reply = {"status": "error", "inferred": False, "reason": f"could not start the cell process: {exc}"}
        proto.write(json.dumps(reply, default=str) + "\n")
    os._exit(0)


def _spawn_main() -> None:
    """A fresh interpreter for one cell (CUDA): request on stdin, results to the fd it names."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request = json.loads(sys.stdin.readline())
    _cell_body(request, request["result_fd"])


# =========================================================================== executors
class _LineReader:
    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float | None) -> bytes | None:
        """One line, b"" on EOF, None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], 1.0 if remaining is None else min(1.0, remaining))
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return b""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["ZOO_PROFILER_PARENT"] = str(os.getpid())
    return env


class ZygoteExecutor:
    """Fork-per-cell from a compute-free interpreter (CPU)."""

    name = "fork"

    def __init__(self, preload: Iterable[str] = ()):
        self.preload = [p for p in preload if p]
        self.proc: subprocess.Popen | None = None
        self.reader: _LineReader | None = None
        self.restarts = 0

    def _start(self) -> None:
        env = _child_env()
        env["ZOO_PROFILER_PRELOAD"] = json.dumps(self.preload)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from profiler.runner import _zygote_main; _zygote_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only this process; it cleans up
        )
        self.reader = _LineReader(self.proc.stdout.fileno())
        line = self.reader.readline(timeout=300)
        if not line:
            self.close()
            raise RuntimeError("the profiler's worker process did not start (see the lines above)")

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        request = {"cell": cell.to_dict(), "opts": opts, "timeout": timeout}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return {"status": "error", "inferred": False, "reason": "the profiler's worker process died"}
        wait = None if timeout is None else timeout + _grace(timeout) + 60
        line = self.reader.readline(timeout=wait)
        if line:
            return json.loads(line)
        self.close()  # no reply: the zygote itself is stuck or dead; a fresh one serves the next cell
        self.restarts += 1
        if line is None:
            return {"status": "timeout", "inferred": False, "reason": f"no reply within {wait:g} s (worker killed)"}
        return {"status": "error", "inferred": False, "reason": "the profiler's worker process died"}

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            self.proc = None


class SpawnExecutor:
    """A fresh interpreter per cell (CUDA, or where fork is unavailable)."""

    name = "spawn"

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        r, w = os.pipe()
        log = tempfile.TemporaryFile()
        request = {"cell": cell.to_dict(), "opts": opts, "result_fd": w}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from profiler.runner import _spawn_main; _spawn_main()"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            pass_fds=(w,),
            env=_child_env(),
            start_new_session=True,
        )
        os.close(w)
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass

        def kill():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        try:
            # the interpreter start and imports are not the cell's time: allow them on top
            return _supervise(r, None if timeout is None else timeout + 60, kill, proc.wait, log)
        finally:
            log.close()

    def close(self) -> None:
        pass


class InProcessExecutor:
    """Cells in this process (``--no-isolate``): soft timeout, RLIMIT_AS set and restored."""

    name = "inline"

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        from profiler.measure import measure_cell

        limits = None
        if not cell.device.startswith("cuda") and opts.get("memory_budget_bytes"):
            import resource

            limits = resource.getrlimit(resource.RLIMIT_AS)
            _set_memory_limit(opts["memory_budget_bytes"], opts.get("threads"))
        try:
            result = measure_cell(cell, opts)
        finally:
            if limits is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_AS, limits)
        return {k: v for k, v in result.items() if not k.startswith("_")}

    def close(self) -> None:
        pass


# =========================================================================== settings
def resolve_device(device: str) -> str:
    import torch

    dev = str(device).strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev == "cuda" or dev.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ZooValueError(
                f"device: expected an available CUDA device, got {device!r} but torch {torch.__version__} sees no GPU"
            )
        if ":" in dev:
            try:
                index = int(dev.split(":", 1)[1])
            except ValueError:
                raise ZooValueError(f"device: expected cuda or cuda:<index>, got {device!r}") from None
            if not 0 <= index < torch.cuda.device_count():
                raise ZooValueError(f"device: expected cuda:0..cuda:{torch.cuda.device_count() - 1}, got {device!r}")
        return dev
    raise ZooValueError(f"device: expected auto, cpu or cuda, got {device!r}")


def default_memory_budget(device: str) -> int | None:
    """90% of the free memory: MemAvailable on CPU, free GPU memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(0.9 * free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(0.9 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return None


# =========================================================================== the sweep
def _frontier_reason(frontier: dict, cell: Cell) -> str | None:
    """'after OOM at T=...' when a shorter (or, for train, an equal forward) cell failed."""
    for (label, mode), (T0, what) in frontier.items():
        if label != cell.label:
            continue
        if mode == cell.mode and T0 < cell.T:
            return f"after {what} at T={T0}"
        if mode == "forward" and cell.mode == "train" and T0 <= cell.T:
            return f"after forward {what} at T={T0}"
    return None


def _series_id(c: dict | Cell) -> tuple:
    get = c.get if isinstance(c, dict) else (lambda k: getattr(c, k))
    return (get("label"), get("scope"), get("mode"), get("batch"), get("dim"), get("heads"), get("depth"), get("dtype"), get("device"), json.dumps(get("model"), sort_keys=True))


def _fallback_prediction(history: list[dict], T: int, declared: float | None) -> tuple[int, int] | None:
    """Extrapolate (abs peak, step peak) at T from measured shorter cells of the same series:
    exponent = max(declared class, last local slope), so an undeclared T^2 shows up."""
    pts = sorted((h["T"], h["mem_peak_bytes"], h["mem_abs_peak_bytes"]) for h in history
                 if h.get("mem_peak_bytes") and h.get("mem_abs_peak_bytes") and h["T"] < T)
    if len(pts) < 2:
        return None
    (T1, m1, _), (T2, m2, a2) = pts[-2], pts[-1]
    slope = math.log(m2 / m1) / math.log(T2 / T1) if m1 > 0 and m2 > 0 and T2 > T1 else 0.0
    k = min(3.0, max(declared or 1.0, slope))
    step = m2 * (T / T2) ** k
    return int(a2 - m2 + step), int(step)


def run_sweep(
    cells: list[Cell],
    *,
    out: str | os.PathLike,
    settings: dict[str, Any] | None = None,
    isolate: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_budget: int | None = None,
    threads: int | None = None,
    time_budget: float = 2.0,
    baseline: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    builder: str | None = None,
    predict: bool = True,
    declared: dict[str, dict[str, float]] | None = None,
    command: list[str] | None = None,
    executor: str | None = None,
    cpu_heap: str = "managed",
) -> Path:
    """Run planned cells, appending one record each to ``out``; see :func:`run_profile`.

    ``executor``: ``fork`` (zygote, the CPU default), ``spawn`` (a fresh interpreter per cell, the
    CUDA default) or ``inline`` (``isolate=False``); None picks by device.
    """
    from profiler.fit import fit_records

    if cpu_heap not in CPU_HEAP_CHOICES:
        raise ZooValueError(f"cpu heap: expected one of {', '.join(CPU_HEAP_CHOICES)}, got {cpu_heap!r}")
    path = check_writable(out)
    has_records = path.exists() and path.stat().st_size > 0
    if has_records and not (resume or overwrite):
        raise ZooValueError(
            f"out: {str(path)!r} already holds records; pass --resume to add the missing cells or --overwrite to replace it"
        )
    device = cells[0].device if cells else "cpu"
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    previous: dict[str, dict] = {}
    if resume and not overwrite:
        for rec in read_records(path):
            if rec.get("kind") == "cell" and rec.get("key"):
                previous[rec["key"]] = rec

    run_id = uuid.uuid4().hex[:12]
    header = {
        "kind": "header",
        "schema": 1,
        "run_id": run_id,
        "created": now_iso(),
        "command": list(command if command is not None else sys.argv),
        "env": environment(threads, device),
        "settings": {
            **(settings or {}),
            "isolate": isolate,
            "timeout_s": timeout,
            "memory_budget_bytes": memory_budget,
            "threads": threads,
            "time_budget_s": time_budget,
            "baseline": baseline,
            "resume": resume,
            "cpu_heap": cpu_heap if not device.startswith("cuda") else None,
        },
    }
    if executor is None:
        if not isolate:
            executor = "inline"
        elif device.startswith("cuda") or not hasattr(os, "fork"):
            executor = "spawn"
        else:
            executor = "fork"
    if executor == "fork":
        executor = ZygoteExecutor([builder] if builder else [])
    elif executor == "spawn":
        executor = SpawnExecutor()
    elif executor == "inline":
        executor = InProcessExecutor()
    else:
        raise ZooValueError(f"executor: expected fork, spawn or inline, got {executor!r}")
    header["settings"]["executor"] = executor.name

    console = None
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )

    frontier: dict[tuple, tuple[int, str]] = {}
    history: dict[tuple, list[dict]] = {}
    planned_keys = [c.key for c in cells]
    planned_series = {_series_id(c) for c in cells}
    for rec in previous.values():
        if _series_id(rec) not in planned_series:  # another sweep's settings in the same file
            continue
        if rec.get("status") in ("oom", "timeout") and not (rec.get("inferred") and (rec.get("reason") or "").startswith("after")):
            _update_frontier(frontier, rec["label"], rec["mode"], rec["T"], rec["status"])
        if rec.get("status") == "ok":
            history.setdefault(_series_id(rec), []).append(rec)

    writer = RecordWriter(path, truncate=overwrite)
    written: list[dict] = []
    try:
        writer.append(header)
        todo = [c for c in cells if c.key not in previous]
        if bar is not None:
            bar.start()
            task = bar.add_task("starting", total=len(cells), completed=len(cells) - len(todo))
        for cell in todo:
            if bar is not None:
                bar.update(task, description=cell.title)
            started, t0 = now_iso(), time.monotonic()
            result = _decide_without_running(cell, frontier)
            if result is None:
                opts = {
                    "threads": threads,
                    "time_budget_s": time_budget,
                    "memory_budget_bytes": memory_budget,
                    "predict": predict,
                    "builder": builder,
                    "timeout_s": timeout,
                    "cpu_heap": cpu_heap,
                }
                fb = _fallback_prediction(history.get(_series_id(cell), []), cell.T, (declared or {}).get(cell.mixer, {}).get("memory"))
                if fb is not None:
                    opts["fallback_predicted_abs"], opts["fallback_predicted_step"] = fb
                result = executor.run(cell, opts, timeout)
            record = _make_record(cell, result, run_id, started, time.monotonic() - t0)
            writer.append(record)
            written.append(record)
            if record["status"] in ("oom", "timeout") and not (record["inferred"] and (record["reason"] or "").startswith("after")):
                _update_frontier(frontier, cell.label, cell.mode, cell.T, record["status"])
            if record["status"] == "ok":
                history.setdefault(_series_id(cell), []).append(record)
            if record["status"] not in ("ok", "skipped") and console is not None:
                tag = "inferred " if record["inferred"] else ""
                bar.console.print(f"{cell.title}: {tag}{record['status']}: {record['reason']}", highlight=False, markup=False)
            if bar is not None:
                bar.advance(task)
        if bar is not None:
            bar.update(task, description="done")
            bar.stop()
            bar = None
        # fits over every record of the planned cells (measured now or before a resume)
        latest = dict(previous)
        latest.update({r["key"]: r for r in written})
        mine = [latest[k] for k in planned_keys if k in latest]
        for fit in fit_records(mine, declared, run_id=run_id):
            writer.append(fit)
    finally:
        if bar is not None:
            bar.stop()
        executor.close()
        writer.close()
    if console is not None:
        _print_table(mine, baseline, Console())
    return path


def _update_frontier(frontier: dict, label: str, mode: str, T: int, status: str) -> None:
    what = "OOM" if status == "oom" else "timeout"
    key = (label, mode)
    if key not in frontier or T < frontier[key][0]:
        frontier[key] = (T, what)


def _decide_without_running(cell: Cell, frontier: dict) -> dict | None:
    if cell.unsupported:
        return {"status": "unsupported", "inferred": True, "reason": cell.unsupported}
    reason = _frontier_reason(frontier, cell)
    if reason:
        return {"status": "skipped", "inferred": True, "reason": reason}
    return None


def _make_record(cell: Cell, result: dict, run_id: str, started: str, wall: float) -> dict[str, Any]:
    rec = {k: None for k in CELL_KEYS}
    rec.update(
        kind="cell", schema=1, run_id=run_id, key=cell.key, mixer=cell.mixer, label=cell.label, config=cell.config,
        overrides=cell.overrides, scope=cell.scope, mode=cell.mode, T=cell.T, batch=cell.batch, dim=cell.dim,
        heads=cell.heads, depth=cell.depth, dtype=cell.dtype, device=cell.device, causal=cell.causal, model=cell.model,
        checkpointing=False,
    )
    for k, v in result.items():
        if not k.startswith("_"):
            rec[k] = v
    rec.setdefault("status", "error")
    if rec["status"] is None:
        rec["status"] = "error"
        rec["reason"] = rec.get("reason") or "no status reported"
    rec["inferred"] = bool(rec.get("inferred"))
    if rec["status"] == "ok":
        rec["reason"] = None
    if cell.extra:
        rec["extra"] = cell.extra
    rec["started_at"], rec["wall_s"] = started, round(wall, 4)
    # the key order of RECORDS.md, extras after
    ordered = {"kind": rec.pop("kind"), "schema": rec.pop("schema")}
    ordered.update({k: rec.pop(k) for k in CELL_KEYS if k in rec})
    ordered.update(rec)
    return ordered


# =========================================================================== the end table
def _fmt_time(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _fmt_mem(b: float | None) -> str:
    if b is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{int(b)} B"


_STATUS_TEXT = {"oom": "OOM", "timeout": "TIMEOUT", "unsupported": "n/a", "error": "ERROR", "skipped": "skipped"}


def _print_table(records: list[dict], baseline: str | None, console) -> None:
    """mixers x lengths per mode: time, peak memory and the time ratio to the baseline."""
    from rich.markup import escape
    from rich.table import Table

    cells = [r for r in records if r.get("kind", "cell") == "cell"]
    if not cells:
        return
    lengths = sorted({r["T"] for r in cells})
    for mode in [m for m in MODES if any(r["mode"] == m for r in cells)]:
        by = {(r["label"], r["T"]): r for r in cells if r["mode"] == mode}
        labels = list(dict.fromkeys(r["label"] for r in cells if r["mode"] == mode))
        base_label = None
        if baseline:
            base_label = baseline if baseline in labels else next((l for l in labels if l.split("[")[0] == baseline), None)
        title = f"{mode}: median time · peak memory" + (f" (time ratio to {escape(base_label)})" if base_label else "")
        table = Table(title=title, title_justify="left")
        table.add_column("mixer", no_wrap=True, min_width=max(len(l) for l in labels))
        for T in lengths:
            table.add_column(f"T={T}", justify="right")
        for label in labels:
            row = [label]
            for T in lengths:
                r = by.get((label, T))
                if r is None:
                    row.append("")
                    continue
                if r["status"] != "ok":
                    text = _STATUS_TEXT.get(r["status"], r["status"])
                    row.append(text + ("*" if r.get("inferred") and r["status"] == "oom" else ""))
                    continue
                text = f"{_fmt_time(r.get('time_median_s'))} · {_fmt_mem(r.get('mem_peak_bytes'))}"
                b = by.get((base_label, T)) if base_label else None
                if b is not None and label != base_label and b["status"] == "ok" and b.get("time_median_s") and r.get("time_median_s"):
                    text += f" ({r['time_median_s'] / b['time_median_s']:.2f}x)"
                if r.get("noisy"):
                    text += " ~"
                row.append(text)
            table.add_row(*[escape(t) for t in row])
        console.print(table)
    console.print("OOM* = predicted, not run · ~ = noisy (IQR/median > 10%) · n/a = unsupported", highlight=False)


# =========================================================================== the entry point
def run_profile(
    *,
    mixers: str | list[str] | None = None,
    lengths: str | list[int] | None = None,
    modes: str | tuple[str, ...] | None = None,
    scope: str | None = None,
    preset: str | None = None,
    batch: int | None = None,
    dim: int | None = None,
    heads: int | None = None,
    depth: int | None = None,
    ffn: int | None = None,
    vocab: int | None = None,
    classes: int | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    causal: bool = False,
    out: str | os.PathLike = "runs/profile.jsonl",
    resume: bool = False,
    overwrite: bool = False,
    isolate: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_budget: int | str | None = None,
    baseline: str = "softmax",
    threads: int | None = None,
    time_budget: float | None = None,
    cpu_heap: str = "managed",
    progress: bool = True,
    command: list[str] | None = None,
) -> Path:
    """Sweep registered mixers over lengths and write records to ``out`` (returned).

    Settings come from ``preset`` ("default" when none: all mixers, 1k..16k, forward and train,
    mixer scope, D=256, 4 heads, B=1; see :data:`profiler.cases.PRESETS`); any argument given
    explicitly overrides the preset. ``mixers``: ``"softmax[impl=eager],ponet"``, wildcards, or
    None for all. ``memory_budget``: bytes or ``"8g"`` (default 90% of free RAM / GPU memory).
    ``out`` must not hold records unless ``resume`` (run only missing cells) or ``overwrite``.
    User errors raise :class:`zoo.errors.ZooValueError` before anything is written.
    """
    from zoo.registry import get_spec

    name = preset or "default"
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ZooValueError(f"preset: unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}")
    p = PRESETS[name]

    def pick(value, key, default=None):
        return value if value is not None else p.get(key, default)

    scope = pick(scope, "scope", "mixer")
    if scope not in SCOPES:
        raise ZooValueError(f"scope: expected mixer or model, got {scope!r}")
    mode_tuple = parse_modes(pick(modes, "modes", MODES))
    length_list = parse_lengths(pick(lengths, "lengths"))
    batch, dim, heads = pick(batch, "batch", 1), pick(dim, "dim", 256), pick(heads, "heads", 4)
    for nm, v in (("batch", batch), ("dim", dim), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ZooValueError(f"{nm}: expected a positive integer, got {v!r}")
    model = None
    depth_v = None
    if scope == "model":
        depth_v = pick(depth, "depth", 2)
        model = {"vocab": pick(vocab, "vocab", 512), "classes": pick(classes, "classes", 2), "ffn": pick(ffn, "ffn", 128)}
        if p.get("dropout"):  # only a preset sets it (absent: 0, as before)
            model["dropout"] = p["dropout"]
        for nm, v in (("depth", depth_v), *((k, model[k]) for k in ("vocab", "classes", "ffn"))):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ZooValueError(f"{nm}: expected a positive integer, got {v!r}")
    dtype_name = canonical_dtype(dtype)
    dev = resolve_device(device)
    threads = pick(threads, "threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ZooValueError(f"threads: expected a positive integer, got {threads!r}")
    if timeout is not None and not timeout > 0:
        raise ZooValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    t_budget = float(pick(time_budget, "time_budget", 2.0))
    if not t_budget > 0:
        raise ZooValueError(f"time budget: expected a positive number of seconds, got {time_budget!r}")
    budget = parse_size(memory_budget) if memory_budget is not None else default_memory_budget(dev)

    mixer_text = mixers if mixers is not None else p.get("mixers")
    choices = parse_mixers(mixer_text, allow_unregistered=mixers is None and preset is not None)
    if not choices:
        raise ZooValueError("mixers: expected at least one mixer, got none")
    cells = plan_cells(
        choices, length_list, mode_tuple, scope=scope, batch=batch, dim=dim, heads=heads, depth=depth_v,
        dtype=dtype_name, device=dev, causal=bool(causal), model=model,
    )
    declared = {}
    for c in choices:
        if c.registered:
            spec = get_spec(c.name)
            declared[c.name] = {"time": spec.time.exponent, "memory": spec.memory.exponent}
    settings = {
        "lengths": length_list,
        "mixers": [c.label for c in choices],
        "modes": list(mode_tuple),
        "scope": scope,
        "batch": batch,
        "dim": dim,
        "heads": heads,
        "depth": depth_v,
        "model": model,
        "dtype": dtype_name,
        "device": dev,
        "causal": bool(causal),
        "preset": preset,
    }
    return run_sweep(
        cells, out=out, settings=settings, isolate=isolate, timeout=timeout, memory_budget=budget, threads=threads,
        time_budget=t_budget, baseline=baseline, resume=resume, overwrite=overwrite, progress=progress,
        declared=declared, command=command, cpu_heap=cpu_heap,
    )

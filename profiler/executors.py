"""Executors: where a cell runs. ``run(cell, opts, timeout) -> result dict`` and ``close()``.

* :class:`ZygoteExecutor` (``fork``, the CPU default): one fresh interpreter imports torch, zoo
  and the profiler but computes nothing (so no OpenMP pool exists in it), then ``fork()``s one
  child per cell (:mod:`profiler.isolation`). The ~2 s torch import is paid once, not per cell.
* :class:`SpawnExecutor` (``spawn``, the CUDA default): one fresh interpreter per cell, because
  a process must never fork after CUDA is initialised.
* :class:`InProcessExecutor` (``inline``, ``--no-isolate``): cells in this process; the timeout
  can only be checked between calls, and an OOM's cached blocks are released after it.

* ``ray`` and ``submitit`` (:mod:`profiler.exec_ray`, :mod:`profiler.exec_submitit`, optional
  extras): cells fan out over a cluster; they add ``fans_out = True`` and ``submit_all`` (the
  sweep's :mod:`profiler.fanout`), and each worker runs its cell with one of the executors above.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from profiler.cases import Cell
from profiler.isolation import grace, supervise, wait_rusage
from zoo.errors import ZooValueError

__all__ = ["ZygoteExecutor", "SpawnExecutor", "InProcessExecutor", "make_executor", "EXECUTORS", "SPAWN_ALLOWANCE"]

EXECUTORS = ("fork", "spawn", "inline", "ray", "submitit")
SPAWN_ALLOWANCE = 60.0  # seconds on top of the cell timeout for an interpreter's start and imports


class _LineReader:
    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float | None) -> bytes | None:
        """One line, b"" on EOF, None on timeout."""
        import select
        import time

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
    """Fork-per-cell from a compute-free interpreter (CPU cells only)."""

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
            [sys.executable, "-c", "from profiler.isolation import zygote_main; zygote_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            start_new_session=True,  # Ctrl-C reaches only this process; it cleans up
        )
        self.reader = _LineReader(self.proc.stdout.fileno())
        line = self.reader.readline(timeout=300)
        if not line:
            self.close()
            raise RuntimeError("the profiler's worker process did not start (see the lines above)")

    def start(self) -> None:
        """Start the zygote now, unless it runs. Its parent-death signal follows the *thread* that
        starts it (``PR_SET_PDEATHSIG``): a caller that runs cells from worker threads starts it
        from the thread that outlives them (:mod:`profiler.side_by_side`)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        self.start()
        request = {"cell": cell.to_dict(), "opts": opts, "timeout": timeout}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return {"status": "error", "inferred": False, "reason": "the profiler's worker process died"}
        wait = None if timeout is None else timeout + grace(timeout) + 60
        line = self.reader.readline(timeout=wait)
        if line:
            return json.loads(line)
        self.close()  # no reply: the zygote itself is stuck or dead; a fresh one serves the next cell
        self.restarts += 1
        if line is None:
            return {"status": "timeout", "inferred": False,
                    "reason": f"exceeded the {timeout:g} s cell timeout (no reply from the worker; killed)"}
        return {"status": "error", "inferred": False, "reason": "the profiler's worker process died"}

    def close(self) -> None:
        if self.proc is None:
            return
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
            [sys.executable, "-c", "from profiler.isolation import spawn_main; spawn_main()"],
            stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(w,), env=_child_env(), start_new_session=True,
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

        def wait():
            code, rss = wait_rusage(proc.pid)
            proc.returncode = code
            return code, rss

        try:
            # the interpreter's start and imports are not the cell's time: allowed on top
            return supervise(r, timeout, kill, wait, log, budget=opts.get("memory_budget_bytes"),
                             allowance=SPAWN_ALLOWANCE)
        finally:
            log.close()

    def close(self) -> None:
        pass


class InProcessExecutor:
    """Cells in this process (``--no-isolate``): soft timeout, RLIMIT_AS set and restored."""

    name = "inline"

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        import torch

        from profiler.cell import measure_cell
        from profiler.memory import release_after_oom, set_memory_limit

        limits = None
        if not cell.device.startswith("cuda") and opts.get("memory_budget_bytes"):
            import resource

            limits = resource.getrlimit(resource.RLIMIT_AS)
            set_memory_limit(opts["memory_budget_bytes"], opts.get("threads"))
        try:
            result = measure_cell(cell, opts)
        finally:
            if limits is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_AS, limits)
        if result.get("status") == "oom" and not result.get("inferred"):
            release_after_oom(torch.device(cell.device))
        return {k: v for k, v in result.items() if not k.startswith("_")}

    def close(self) -> None:
        pass


def _distributed(name: str, device: str, options: dict[str, Any]):
    """``ray`` or ``submitit`` (optional extras, imported only here). ``options``: threads, timeout,
    ray_address, ray_cpus, max_retries, slurm_partition, slurm_array_parallelism, submitit_folder,
    submitit_cluster."""
    threads = options.get("threads") or 1
    if name == "ray":
        from profiler.exec_ray import RayExecutor

        return RayExecutor(device=device, address=options.get("ray_address"), num_cpus=options.get("ray_cpus"),
                           cpus_per_cell=threads, max_retries=options.get("max_retries", 2))
    from profiler.exec_submitit import SubmititExecutor

    return SubmititExecutor(device=device, folder=options.get("submitit_folder") or "runs/submitit",
                            partition=options.get("slurm_partition"),
                            array_parallelism=options.get("slurm_array_parallelism") or 32,
                            cluster=options.get("submitit_cluster"), cpus_per_cell=threads,
                            cell_timeout=options.get("timeout"))


def make_executor(name: str | None, *, isolate: bool, device: str, preload: Iterable[str] = (),
                  options: dict[str, Any] | None = None):
    """The executor by name (None: ``inline`` without isolation, ``spawn`` for CUDA or where fork
    is unavailable, else ``fork``). ``fork`` for CUDA cells is refused: a forked child cannot
    re-initialise CUDA safely, and one that does records a crash, not a measurement. ``ray`` and
    ``submitit`` fan cells out to other processes or machines (:func:`_distributed`)."""
    cuda = device.startswith("cuda")
    if name is None:
        name = "inline" if not isolate else ("spawn" if cuda or not hasattr(os, "fork") else "fork")
    if name not in EXECUTORS:
        raise ZooValueError(f"executor: expected one of {', '.join(EXECUTORS)}, got {name!r}")
    if name in ("ray", "submitit"):
        return _distributed(name, device, options or {})
    if name == "fork" and cuda:
        raise ZooValueError(f"executor: fork cannot serve CUDA cells (device {device!r}); use spawn or inline")
    if name == "fork":
        return ZygoteExecutor(preload)
    return SpawnExecutor() if name == "spawn" else InProcessExecutor()

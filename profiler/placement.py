"""Where a cell ran (``host``, ``gpu``) and the body of a cell sent to another machine.

Every cell record carries ``host`` (the machine that ran the cell, or the submitting host for a
cell decided without running) and ``gpu`` (the CUDA device's name, null on CPU). A distributed
executor (:mod:`profiler.exec_ray`, :mod:`profiler.exec_submitit`) ships :func:`run_cell_here` to
a worker: the worker runs the cell with the profiler's own isolation (a forked child of a
per-worker zygote on CPU, a fresh interpreter per cell on CUDA), so timeouts, the memory budget
and the OOM evidence are exactly those of a local sweep. The worker returns the result; only the
submitting host writes records.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

__all__ = ["placement", "stamp_placement", "run_cell_here"]

_GPU_NAMES: dict[str, str | None] = {}
_LOCAL_EXECUTORS: dict[str, Any] = {}  # one per worker process, reused by the cells it runs


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    if device not in _GPU_NAMES:
        try:
            import torch

            index = int(device.split(":", 1)[1]) if ":" in device else 0
            _GPU_NAMES[device] = torch.cuda.get_device_name(index) if torch.cuda.is_available() else None
        except Exception:  # no driver here: the name is unknown, never a failed cell
            _GPU_NAMES[device] = None
    return _GPU_NAMES[device]


def placement(device: str) -> dict[str, Any]:
    """``{"host", "gpu", "gpu_visible"}`` of this process for a cell on ``device``."""
    cuda = device.startswith("cuda")
    return {"host": socket.gethostname(), "gpu": _gpu_name(device),
            "gpu_visible": os.environ.get("CUDA_VISIBLE_DEVICES") if cuda else None}


def stamp_placement(result: dict[str, Any], device: str) -> dict[str, Any]:
    """Fill ``host``/``gpu`` from this process where the executor did not report them."""
    if "host" not in result or "gpu" not in result:
        for key, value in placement(device).items():
            result.setdefault(key, value)
    return result


def _local_executor(device: str):
    """This worker's executor: a zygote on CPU (kept for the next cell), spawn on CUDA."""
    from profiler.executors import SpawnExecutor, ZygoteExecutor

    kind = "spawn" if device.startswith("cuda") or not hasattr(os, "fork") else "fork"
    if kind not in _LOCAL_EXECUTORS:
        _LOCAL_EXECUTORS[kind] = SpawnExecutor() if kind == "spawn" else ZygoteExecutor(
            [os.environ["ZOO_WORKER_PRELOAD"]] if os.environ.get("ZOO_WORKER_PRELOAD") else [])
    return _LOCAL_EXECUTORS[kind]


def run_cell_here(cell_data: dict[str, Any], opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one cell on this machine (the worker side of a distributed executor).

    Returns the cell's result plus ``host``, ``gpu``, ``gpu_visible`` and ``worker_wall_s`` (the
    seconds the cell took on the worker, from its request to its result)."""
    from profiler.cases import Cell

    cell = Cell.from_dict(cell_data)
    builder = opts.get("builder")
    if builder and not os.environ.get("ZOO_WORKER_PRELOAD"):
        os.environ["ZOO_WORKER_PRELOAD"] = builder
    t0 = time.monotonic()
    result = _local_executor(cell.device).run(cell, opts, timeout)
    result.update(placement(cell.device))
    result["worker_wall_s"] = round(time.monotonic() - t0, 4)
    return result

"""The ``ray`` executor: one Ray core task per cell, cluster-wide (``zoo profile --executor ray``).

* ``--ray-address auto`` (or ``ray://...``, ``host:port``) joins a running cluster; no address
  starts a local one (a laptop works), its size ``--ray-cpus`` (default: every core).
* A CUDA cell asks for one GPU (``num_gpus=1``: Ray sets ``CUDA_VISIBLE_DEVICES``, so each cell
  has its GPU to itself); a CPU cell asks for its thread count in CPUs.
* Ray's memory monitor is switched off (``RAY_memory_monitor_refresh_ms=0``, set before a local
  cluster starts; a cluster started by hand needs it in ``ray start``'s environment), because it
  kills the biggest worker when the node runs low, which is exactly the cell being measured: OOM
  handling stays the profiler's (the budget, the evidence, ``oom`` vs ``killed``).
* A worker that dies mid-cell (killed, its node lost) is retried by Ray up to ``max_retries``
  times; after that the cell is recorded ``killed`` with Ray's reason. A cell is never lost or
  duplicated: the submitting host writes every record (:mod:`profiler.fanout`).

Ray is an optional extra (``pip install -e '.[ray]'``), imported only when this executor is chosen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

from profiler.cases import Cell
from zoo.errors import ZooValueError

__all__ = ["RayExecutor", "MEMORY_MONITOR_ENV", "ray_failure"]

MEMORY_MONITOR_ENV = "RAY_memory_monitor_refresh_ms"  # "0" disables Ray's OOM killer (Ray's docs)
ROOT = str(Path(__file__).resolve().parent.parent)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ZooValueError("executor: ray is not installed; pip install -e '.[ray]' (or pip install ray)") from None
    return ray


def ray_failure(exc: BaseException, retries: int) -> dict[str, Any]:
    """The record fields of a task Ray could not complete: a dead worker or node -> ``killed``,
    an exception raised by the profiler's own code -> ``error``; one line each."""
    import ray.exceptions as rex

    text = " ".join(str(exc).split())[:300]
    died = tuple(t for t in (getattr(rex, n, None) for n in ("WorkerCrashedError", "NodeDiedError",
                                                             "OutOfMemoryError", "TaskCancelledError",
                                                             "LocalRayletDiedError", "ObjectLostError")) if t)
    if isinstance(exc, died):
        return {"status": "killed", "inferred": False,
                "reason": f"the Ray worker running the cell died ({type(exc).__name__}, after {retries} retries): {text}"}
    return {"status": "error", "inferred": False, "reason": f"ray: {type(exc).__name__}: {text}"}


class RayExecutor:
    """Cells as Ray core tasks, at most one in flight per free slot of the cluster."""

    name = "ray"
    fans_out = True

    def __init__(self, *, device: str, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_cell: int = 1, max_retries: int = 2):
        ray = _import_ray()
        self.ray, self.cuda, self.max_retries = ray, device.startswith("cuda"), int(max_retries)
        self.owned = False
        if not ray.is_initialized():
            self._start(address, num_cpus)
        resources = ray.cluster_resources()
        if self.cuda and resources.get("GPU", 0) < 1:
            self.close()
            raise ZooValueError("executor: the Ray cluster has no GPU for CUDA cells (start it with GPUs or use --device cpu)")
        per_cell = 1 if self.cuda else max(1, int(cpus_per_cell))
        total = resources.get("GPU", 0) if self.cuda else resources.get("CPU", 1)
        self.slots = max(1, int(total // per_cell))
        options = {"num_gpus": 1, "num_cpus": 1} if self.cuda else {"num_cpus": per_cell}
        from profiler.placement import run_cell_here

        self.task = ray.remote(run_cell_here).options(max_retries=self.max_retries, retry_exceptions=False, **options)

    def _start(self, address: str | None, num_cpus: int | None) -> None:
        os.environ.setdefault(MEMORY_MONITOR_ENV, "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = num_cpus
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": ROOT, MEMORY_MONITOR_ENV: "0"}}
        try:
            self.ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, a bad address, a cluster that did not start
            text = " ".join(str(exc).split())[:200]
            raise ZooValueError(f"ray address: cannot start or join a Ray cluster at {address or 'local'!r}: {text}") from None
        self.owned = True

    def submit_all(self, items: list[tuple[Cell, dict]], timeout: float | None) -> Iterator[tuple[int, dict]]:
        """Yield (index, result) for every item as cells finish, ``self.slots`` in flight."""
        queue = list(enumerate(items))
        in_flight: dict[Any, tuple[int, float]] = {}
        while queue or in_flight:
            while queue and len(in_flight) < self.slots:
                i, (cell, opts) = queue.pop(0)
                in_flight[self.task.remote(cell.to_dict(), opts, timeout)] = (i, time.monotonic())
            ready, _ = self.ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                i, sent = in_flight.pop(ref)
                try:
                    result = self.ray.get(ref)
                except Exception as exc:  # the task did not complete: worker/node died, or raised
                    result = ray_failure(exc, self.max_retries)
                if result.get("worker_wall_s") is not None:
                    # Ray's share of the round trip: scheduling, transfer, a worker's first start
                    result["executor_overhead_s"] = round(time.monotonic() - sent - result["worker_wall_s"], 4)
                yield i, result

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        return next(iter(self.submit_all([(cell, opts)], timeout)))[1]

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
        self.owned = False

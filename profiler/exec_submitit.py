"""The ``submitit`` executor: cells as a SLURM job array (``zoo profile --executor submitit``).

``submitit.AutoExecutor`` picks SLURM where ``sbatch`` exists and its local executor elsewhere
(jobs as local processes), so the same command works on a laptop. One job per cell, in arrays of
at most ``--slurm-array-parallelism`` running at once; a CUDA cell asks for one GPU. Each job runs
the cell with the profiler's own isolation (:func:`profiler.placement.run_cell_here`) and returns
the result; the submitting host writes every record (:mod:`profiler.fanout`).

A preempted or timed-out job is requeued by submitit (the job is a checkpointable callable that
resubmits itself as is: a cell is measured from scratch); a job that still does not complete is
recorded ``killed`` (``UncompletedJobError``, with submitit's reason) and one whose Python code
failed ``error``. Submitit is an optional extra, imported only when this executor is chosen.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator

from profiler.cases import Cell
from zoo.errors import ZooValueError

__all__ = ["SubmititExecutor", "CellJob", "submitit_failure"]


class CellJob:
    """One cell as a submitit job; ``checkpoint`` makes preemption a requeue, not a lost cell."""

    def __call__(self, cell_data: dict, opts: dict, timeout: float | None) -> dict[str, Any]:
        from profiler.placement import run_cell_here

        return run_cell_here(cell_data, opts, timeout)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(), *args, **kwargs)


def submitit_failure(exc: BaseException) -> dict[str, Any]:
    from submitit.core.utils import UncompletedJobError

    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, UncompletedJobError):
        return {"status": "killed", "inferred": False, "reason": f"the job did not complete (preempted, timed out or lost): {text}"}
    return {"status": "error", "inferred": False, "reason": f"submitit: {type(exc).__name__}: {text}"}


class SubmititExecutor:
    """Cells as submitit jobs: a SLURM job array, or local processes without SLURM."""

    name = "submitit"
    fans_out = True

    def __init__(self, *, device: str, folder: str | Path = "runs/submitit", partition: str | None = None,
                 array_parallelism: int = 32, cluster: str | None = None, cpus_per_cell: int = 1,
                 cell_timeout: float | None = None):
        try:
            import submitit
        except ImportError:
            raise ZooValueError("executor: submitit is not installed; pip install -e '.[submitit]' (or pip install submitit)") from None
        if isinstance(array_parallelism, bool) or not isinstance(array_parallelism, int) or array_parallelism < 1:
            raise ZooValueError(f"slurm array parallelism: expected a positive integer, got {array_parallelism!r}")
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.slots = array_parallelism
        allowance = 60.0 + 120.0  # an interpreter's start, the imports, the hard-kill grace
        minutes = 60 if cell_timeout is None else max(2, math.ceil((cell_timeout + allowance) / 60))
        params: dict[str, Any] = {"timeout_min": minutes, "cpus_per_task": max(1, int(cpus_per_cell)),
                                  "name": "zoo-cell", "slurm_array_parallelism": array_parallelism}
        if device.startswith("cuda"):
            params["gpus_per_node"] = 1
        if partition:
            params["slurm_partition"] = partition
        self.executor.update_parameters(**params)

    def submit_all(self, items: list[tuple[Cell, dict]], timeout: float | None) -> Iterator[tuple[int, dict]]:
        """Submit the cells as one array; yield (index, result) as jobs finish."""
        if not items:
            return
        if self.executor.cluster == "slurm":  # SLURM throttles the array itself
            window = len(items)
        else:  # local processes: at most ``slots`` at once
            window = self.slots
        for start in range(0, len(items), window):
            yield from self._array(items[start:start + window], timeout, start)

    def _array(self, items: list[tuple[Cell, dict]], timeout: float | None, offset: int) -> Iterator[tuple[int, dict]]:
        jobs = self.executor.map_array(CellJob(), [c.to_dict() for c, _ in items], [o for _, o in items],
                                       [timeout] * len(items))
        sent = time.monotonic()
        pending = dict(enumerate(jobs))
        while pending:
            finished = [i for i, job in pending.items() if job.done()]
            if not finished:
                time.sleep(0.2)
                continue
            for i in finished:
                job = pending.pop(i)
                try:
                    result = job.result()
                except Exception as exc:
                    result = submitit_failure(exc)
                result.setdefault("job_id", str(job.job_id))
                if result.get("worker_wall_s") is not None:
                    result["executor_overhead_s"] = round(time.monotonic() - sent - result["worker_wall_s"], 4)
                yield offset + i, result

    def run(self, cell: Cell, opts: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        return next(iter(self.submit_all([(cell, opts)], timeout)))[1]

    def close(self) -> None:
        pass

"""The options of the distributed executors, checked once (``zoo profile --executor ...``).

Each option belongs to one executor; giving it with another is a user error (one line), not a
silently ignored flag.
"""

from __future__ import annotations

from typing import Any

from zoo.errors import ZooValueError

__all__ = ["executor_options", "OWNERS"]

# option -> the executor it belongs to
OWNERS = {
    "ray_address": "ray",
    "ray_cpus": "ray",
    "slurm_partition": "submitit",
    "slurm_array_parallelism": "submitit",
    "submitit_folder": "submitit",
    "submitit_cluster": "submitit",
}


def executor_options(executor: str | None, **given: Any) -> dict[str, Any]:
    """The options that were given (not None), checked against ``executor``."""
    options = {k: v for k, v in given.items() if v is not None}
    for key in options:
        if key not in OWNERS:
            raise ZooValueError(f"executor options: unknown option {key!r}")
        if OWNERS[key] != executor:
            flag = "--" + key.replace("_", "-")
            raise ZooValueError(f"{flag}: belongs to --executor {OWNERS[key]}, got --executor {executor or 'default'}")
    for key in ("ray_cpus", "slurm_array_parallelism"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ZooValueError(f"--{key.replace('_', '-')}: expected a positive integer, got {v!r}")
    return options

"""Profile records (``docs/RECORDS.md``, schema 1): the environment header, atomic JSON Lines
appends, and reading a file back (raw records or a tidy DataFrame).

Appending is atomic per line: each record is serialised first and written with ONE ``os.write``
on an ``O_APPEND`` descriptor, then fsynced, so an interrupted sweep leaves only whole lines.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from reports.load import SCHEMA_VERSION, parse_record
from zoo.errors import ZooValueError

__all__ = [
    "SCHEMA",
    "CELL_KEYS",
    "RecordWriter",
    "check_writable",
    "environment",
    "read_records",
    "load_results",
    "now_iso",
]

SCHEMA = SCHEMA_VERSION  # one number, the report's reader checks it

# every cell record carries all of these keys (null when not measured), in RECORDS.md order
CELL_KEYS = [
    "run_id", "key", "mixer", "label", "config", "scope", "mode", "T", "batch", "dim", "heads", "depth",
    "dtype", "device", "causal", "model", "status", "reason", "inferred", "time_median_s", "time_iqr_s",
    "time_p20_s", "time_p80_s", "time_n", "time_samples", "noisy", "steps_per_s", "mem_peak_bytes",
    "mem_abs_peak_bytes", "mem_method", "mem_tensor_peak_bytes", "mem_disagree", "mem_predicted_bytes",
    "flops_analytic", "flops_counted", "flops_disagree", "params", "compute_dtype", "sdpa_backend",
    "checkpointing", "threads", "started_at", "wall_s", "pad_fraction", "compile", "class_from",
]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (never sentinel numbers), tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def check_writable(path: str | os.PathLike) -> Path:
    """The output path, its folder created if needed; ZooValueError (one line) if it cannot be
    written. Creates no file."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ZooValueError(f"out: expected a file path, got the directory {str(path)!r}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooValueError(f"out: cannot create the folder {str(parent)!r}: {exc.strerror or exc}") from None
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise ZooValueError(f"out: cannot write {str(path)!r}: permission denied")
    return path


class RecordWriter:
    """Appends records to a JSONL file, one atomic ``os.write`` + fsync per record."""

    def __init__(self, path: str | os.PathLike, *, truncate: bool = False):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ZooValueError(f"out: cannot write {str(self.path)!r}: {exc.strerror or exc}") from None
        # a file cut mid-line by a crash elsewhere: start our records on a fresh line
        self._needs_newline = False
        try:
            size = os.fstat(self.fd).st_size
            if size:
                with open(self.path, "rb") as fh:
                    fh.seek(size - 1)
                    self._needs_newline = fh.read(1) != b"\n"
        except OSError:
            pass

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(_clean(record), separators=(",", ":"), allow_nan=False) + "\n"
        if self._needs_newline:
            line = "\n" + line
            self._needs_newline = False
        data = line.encode()
        written = os.write(self.fd, data)
        if written != len(data):  # only on a full disk; never leave half a record
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every valid record of a JSONL file (partial or corrupt lines are skipped), parsed by
    :func:`reports.load.parse_record`, the report's own line parser."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            rec = parse_record(raw)
            if rec is not None:
                yield rec


# --------------------------------------------------------------------------- environment
def _read_first(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(root: Path) -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=20
        )
        return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(threads: int | None, device: str) -> dict[str, Any]:
    """The header's ``env``: versions, device, CPU, threads, git commit and dirty flag, load."""
    import torch

    cuda = device.startswith("cuda")
    device_name = None
    if cuda and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device).index or 0)
    cpu = _cpu_model()
    commit, dirty = _git(Path(__file__).resolve().parent.parent)
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
        # "highest" = full fp32 matmuls; "high"/"medium" let CUDA use TF32 / bf16 passes
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device_name": device_name or cpu,
        "cpu_model": cpu,
        "threads": threads,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": commit,
        "git_dirty": dirty,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"),
        "governor": _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "loadavg": load,
        "cpu_count": os.cpu_count(),
    }


# --------------------------------------------------------------------------- loading
def load_results(path: str | os.PathLike):
    """A tidy pandas DataFrame: one row per cell (the last record per ``key``), read by
    :func:`reports.read_profile`, with the header's ``env`` fields joined as ``env_<name>``
    columns (and ``command``, ``created``) by ``run_id``. Missing or unreadable file ->
    ZooValueError."""
    import pandas as pd

    from reports import read_profile
    from reports.errors import ReportError

    try:
        profile = read_profile(path)
    except ReportError as exc:
        raise ZooValueError(f"results: {exc}") from None
    df = profile.cells
    env_rows = []
    for h in profile.headers:
        row = {"run_id": h.get("run_id"), "created": h.get("created"), "command": " ".join(h.get("command") or [])}
        row.update({f"env_{k}": (v if not isinstance(v, (list, dict)) else json.dumps(v)) for k, v in (h.get("env") or {}).items()})
        env_rows.append(row)
    if env_rows and len(df):
        df = df.merge(pd.DataFrame(env_rows).drop_duplicates("run_id", keep="last"), on="run_id", how="left")
    return df

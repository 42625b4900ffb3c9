"""The device table of ``zoo project``: peak FLOP/s per dtype, memory bandwidth, memory, and a
per-op launch overhead, for GPUs the user may not have, plus the local CPU measured once.

Built-in GPUs (vendor datasheets, dense math, no structured sparsity; SXM parts; fp32 is the
non-tensor-core rate because torch's default ``float32_matmul_precision`` is "highest"):

* A100 SXM4 80GB (NVIDIA A100 datasheet): FP64 9.7 TFLOP/s, FP32 19.5, BF16/FP16 tensor 312;
  HBM2e 2,039 GB/s; 80 GB.
* H100 SXM5 80GB (NVIDIA H100 datasheet): FP64 34, FP32 67, BF16/FP16 tensor 989.5 (1,979 is
  the sparse figure); HBM3 3.35 TB/s; 80 GB.
* H200 SXM 141GB (NVIDIA H200 datasheet): the H100's compute (FP64 34, FP32 67, BF16/FP16 989.5);
  HBM3e 4.8 TB/s; 141 GB.
* L4 24GB (NVIDIA L4 datasheet): FP32 30.3, BF16/FP16 tensor 121 (242 sparse); GDDR6 300 GB/s;
  24 GB; FP64 at 1/64 of FP32 (Ada), 0.47.

The op overhead (5 us per kernel launch on a GPU) is a round figure, not a datasheet number.

``cpu``: measured on this machine by :func:`calibrate_cpu` (a short GEMM per dtype, a large copy,
a loop of tiny ops, and a 2-D FFT: ``fft_flops_per_s``, the rate FFT ops get in the roofline
where a device has one), cached in ``$ZOO_CACHE_DIR`` (default ``~/.cache/zoo``) per CPU model,
thread count and torch version, so it is measured once.

A user file (``zoo project --devices-file my.toml`` or ``.json``) adds or replaces entries::

    [mygpu]
    memory_bytes = 48e9
    bandwidth_bytes_per_s = 864e9
    flops_per_s = { fp32 = 91.6e12, bf16 = 181e12 }
    op_overhead_s = 5e-6          # optional
    fft_flops_per_s = 2e12        # optional: FFT ops' achieved FLOP/s (default: the dtype's peak)
    name = "RTX 6000 Ada"         # optional
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ZooValueError

__all__ = ["Device", "BUILTIN", "load_devices", "get_device", "calibrate_cpu", "parse_devices", "key_for_gpu"]

T_ = 1e12
GB = 1e9
GPU_OP_OVERHEAD = 5e-6

BUILTIN: dict[str, dict[str, Any]] = {
    "a100": {"name": "NVIDIA A100 SXM4 80GB", "memory_bytes": 80 * GB, "bandwidth_bytes_per_s": 2039 * GB,
             "flops_per_s": {"fp64": 9.7 * T_, "fp32": 19.5 * T_, "bf16": 312 * T_, "fp16": 312 * T_},
             "op_overhead_s": GPU_OP_OVERHEAD},
    "h100": {"name": "NVIDIA H100 SXM5 80GB", "memory_bytes": 80 * GB, "bandwidth_bytes_per_s": 3350 * GB,
             "flops_per_s": {"fp64": 34 * T_, "fp32": 67 * T_, "bf16": 989.5 * T_, "fp16": 989.5 * T_},
             "op_overhead_s": GPU_OP_OVERHEAD},
    "h200": {"name": "NVIDIA H200 SXM 141GB", "memory_bytes": 141 * GB, "bandwidth_bytes_per_s": 4800 * GB,
             "flops_per_s": {"fp64": 34 * T_, "fp32": 67 * T_, "bf16": 989.5 * T_, "fp16": 989.5 * T_},
             "op_overhead_s": GPU_OP_OVERHEAD},
    "l4": {"name": "NVIDIA L4 24GB", "memory_bytes": 24 * GB, "bandwidth_bytes_per_s": 300 * GB,
           "flops_per_s": {"fp64": 0.47 * T_, "fp32": 30.3 * T_, "bf16": 121 * T_, "fp16": 121 * T_},
           "op_overhead_s": GPU_OP_OVERHEAD},
}
FIELDS = ("memory_bytes", "bandwidth_bytes_per_s", "flops_per_s")
OPTIONAL = ("op_overhead_s", "fft_flops_per_s", "name")
DTYPES = ("fp64", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    memory_bytes: float
    bandwidth_bytes_per_s: float
    flops_per_s: dict
    op_overhead_s: float = 0.0
    measured: bool = False
    fft_flops_per_s: float | None = None  # FFT ops' achieved rate where measured (None: the dtype's peak)

    def peak_flops(self, dtype: str) -> float:
        if dtype not in self.flops_per_s:
            raise ZooValueError(f"dtype: device {self.key!r} has no peak FLOP/s for {dtype} "
                                f"(it has {', '.join(sorted(self.flops_per_s))}); add it with --devices-file")
        return float(self.flops_per_s[dtype])

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "memory_bytes": self.memory_bytes,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "flops_per_s": dict(self.flops_per_s),
                "op_overhead_s": self.op_overhead_s, "measured": self.measured,
                "fft_flops_per_s": self.fft_flops_per_s}


def _positive(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ZooValueError(f"{where}: expected a positive number, got {v!r}")
    return float(v)


def _device(key: str, entry: Any, where: str) -> Device:
    if not isinstance(entry, dict):
        raise ZooValueError(f"{where}: {key}: expected a table of fields, got {type(entry).__name__}")
    unknown = sorted(set(entry) - {*FIELDS, *OPTIONAL})
    if unknown:
        raise ZooValueError(f"{where}: {key}: unknown field {unknown[0]!r}; expected {', '.join(FIELDS)}, "
                            f"{', '.join(OPTIONAL)}")
    missing = [f for f in FIELDS if f not in entry]
    if missing:
        raise ZooValueError(f"{where}: {key}: missing field {missing[0]!r}")
    flops = entry["flops_per_s"]
    if not isinstance(flops, dict) or not flops:
        raise ZooValueError(f"{where}: {key}: flops_per_s: expected a table of dtype = FLOP/s, got {flops!r}")
    bad = [d for d in flops if d not in DTYPES]
    if bad:
        raise ZooValueError(f"{where}: {key}: flops_per_s: unknown dtype {bad[0]!r}; expected {', '.join(DTYPES)}")
    return Device(key=key, name=str(entry.get("name", key)),
                  memory_bytes=_positive(f"{where}: {key}: memory_bytes", entry["memory_bytes"]),
                  bandwidth_bytes_per_s=_positive(f"{where}: {key}: bandwidth_bytes_per_s", entry["bandwidth_bytes_per_s"]),
                  flops_per_s={d: _positive(f"{where}: {key}: flops_per_s.{d}", v) for d, v in flops.items()},
                  op_overhead_s=0.0 if entry.get("op_overhead_s") is None
                  else _positive(f"{where}: {key}: op_overhead_s", entry["op_overhead_s"]),
                  fft_flops_per_s=None if entry.get("fft_flops_per_s") is None
                  else _positive(f"{where}: {key}: fft_flops_per_s", entry["fft_flops_per_s"]))


def parse_devices(text: str, where: str, fmt: str) -> dict[str, Device]:
    """Entries of a user file (``fmt``: "toml" or "json")."""
    try:
        if fmt == "toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise ZooValueError(f"{where}: TOML needs Python 3.11+; write the table as JSON") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise ZooValueError(f"{where}: not valid {fmt.upper()}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not data:
        raise ZooValueError(f"{where}: expected a table of devices, got {type(data).__name__ if data else 'nothing'}")
    return {str(k).lower(): _device(str(k).lower(), v, where) for k, v in data.items()}


def load_devices(path: str | os.PathLike | None = None) -> dict[str, Device]:
    """The built-in table plus a user file's entries (which win). ``cpu`` is not in it: it is
    measured on demand by :func:`get_device`."""
    table = {k: _device(k, v, "built-in device table") for k, v in BUILTIN.items()}
    if path is None:
        return table
    p = Path(path)
    if not p.is_file():
        raise ZooValueError(f"devices file: expected a readable .toml or .json file, got {str(p)!r}")
    fmt = "toml" if p.suffix.lower() == ".toml" else "json" if p.suffix.lower() == ".json" else None
    if fmt is None:
        raise ZooValueError(f"devices file: expected a .toml or .json file, got {str(p)!r}")
    table.update(parse_devices(p.read_text(), f"devices file {p.name}", fmt))
    return table


def get_device(key: str, path: str | os.PathLike | None = None, *, threads: int | None = None,
               recalibrate: bool = False) -> Device:
    """A table entry by key (case-insensitive), or ``cpu``: this machine, calibrated once (again
    with ``recalibrate``: the cached figures came from a busy machine)."""
    table = load_devices(path)
    k = str(key).strip().lower()
    if k in table:
        return table[k]
    if k == "cpu":
        return calibrate_cpu(threads, recalibrate=recalibrate)
    raise ZooValueError(f"device: expected cpu or one of {', '.join(sorted(table))} (or add it with --devices-file), got {key!r}")


def key_for_gpu(name: str) -> str | None:
    """The built-in entry for a CUDA device name ("NVIDIA H200" -> "h200"), None if none fits."""
    import re

    m = re.search(r"\b(h200|h100|a100|l4)\b", str(name).lower())
    return m.group(1) if m else None


# --------------------------------------------------------------------------- the local CPU
def _cache_file(threads: int) -> Path:
    import torch

    from profiler.records import _cpu_model

    ident = json.dumps([_cpu_model(), threads, torch.__version__, os.cpu_count()])
    folder = Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo")
    return folder / f"cpu-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


def _rate(fn, work: float, seconds: float = 0.3) -> float:
    """work / best seconds per call of ``fn`` over repeated calls (the best: least disturbed)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return work / best


def calibrate_cpu(threads: int | None = None, recalibrate: bool = False) -> Device:
    """This CPU: GEMM FLOP/s per dtype, copy bandwidth, per-op overhead; MemAvailable as memory.
    Measured once per (CPU model, threads, torch version) and cached."""
    import torch

    from profiler.settings import default_memory_budget

    threads = int(threads or torch.get_num_threads())
    path = _cache_file(threads)
    entry = None
    if path.is_file() and not recalibrate:
        try:
            entry = json.loads(path.read_text())
        except ValueError:
            entry = None
        if entry is not None and "fft_flops_per_s" not in entry:  # cached before FFTs were measured
            entry = None
    if entry is None:
        entry = measure_cpu(threads)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(entry))
        except OSError:
            pass
    memory = default_memory_budget("cpu") or 8 * GB
    return Device(key="cpu", name=f"this CPU ({threads} threads, measured)", memory_bytes=memory / 0.9,
                  bandwidth_bytes_per_s=entry["bandwidth_bytes_per_s"], flops_per_s=entry["flops_per_s"],
                  op_overhead_s=entry["op_overhead_s"], measured=True, fft_flops_per_s=entry["fft_flops_per_s"])


def measure_cpu(threads: int) -> dict[str, Any]:
    """The measurement behind :func:`calibrate_cpu` (about a second)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flops = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp64", torch.float64)):
            n = 512
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            flops[name] = _rate(lambda: a @ b, 2.0 * n ** 3)
        flops["fp16"] = flops["bf16"]
        src = torch.ones(16 * 2**20)  # 64 MiB: past the caches
        dst = torch.empty_like(src)
        bandwidth = _rate(lambda: dst.copy_(src), 2.0 * src.numel() * 4)  # read + write
        x = torch.ones(8)
        overhead = 1.0 / _rate(lambda: [x.add(1) for _ in range(100)], 100.0)
        fft = _fft_rate()
    finally:
        torch.set_num_threads(old)
    return {"flops_per_s": flops, "bandwidth_bytes_per_s": bandwidth, "op_overhead_s": overhead,
            "fft_flops_per_s": fft, "threads": threads, "torch": torch.__version__, "measured_at": time.time()}


def _fft_rate() -> float:
    """FLOP/s of a 2-D real FFT (16384 x 256 fp32: FNet's shape at 16k tokens, past the caches)
    as the roofline counts FFT FLOPs (5 N log2 N per complex transform): FFTs run far below the
    GEMM peak on a CPU (strided butterfly passes, not fused multiply-adds; about 8x below it
    at this size on a 1-thread AVX-512 core), so the GEMM figure would make them too fast."""
    import torch

    from profiler.flops import count_flops

    x = torch.randn(16384, 256)
    work = count_flops(lambda: torch.fft.rfft2(x))
    return _rate(lambda: torch.fft.rfft2(x), work)

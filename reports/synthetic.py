"""Synthetic profile records with known exponents: for tests, the render check and docs.

Every record follows ``docs/RECORDS.md`` (schema 1). Time is ``overhead + b * T**k`` with
log-normal repetition noise; memory is ``c * T**m``; a cell whose memory would exceed
``budget_bytes`` is an observed OOM and the longer lengths of that mixer are skipped after it,
as the profiler does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MIXERS", "synthetic_records", "write_jsonl"]

# label -> (time exponent, memory exponent, time coefficient (s), memory coefficient (bytes))
DEFAULT_MIXERS: dict[str, tuple[float, float, float, float]] = {
    "softmax": (2.0, 2.0, 4e-9, 48.0),
    "ponet": (1.0, 1.0, 4e-5, 9000.0),
    "fnet": (1.05, 1.0, 1.5e-5, 5000.0),
    "performer": (1.0, 1.0, 9e-5, 20000.0),
}


def synthetic_records(
    mixers: dict[str, tuple[float, float, float, float]] | None = None,
    lengths: list[int] | None = None,
    scope: str = "mixer",
    mode: str = "forward",
    budget_bytes: float = 2.0**31,
    overhead_s: float = 2e-4,
    noise: float = 0.03,
    seed: int = 0,
    run_id: str = "synthetic0",
    device_name: str = "synthetic CPU",
    fidelity: bool = True,
) -> list[dict[str, Any]]:
    """A header, one cell per (mixer, length), and fidelity records for every mixer but softmax."""
    mixers = DEFAULT_MIXERS if mixers is None else mixers
    lengths = lengths or [512, 1024, 2048, 4096, 8192, 16384]
    rng = np.random.default_rng(seed)
    batch, dim, heads, depth = (32, 64, 2, 2) if scope == "model" else (1, 256, 4, None)
    env = {"python": "3.11.2", "torch": "2.13.0", "cuda": None, "cudnn": None, "device_name": device_name,
           "cpu_model": "Synthetic CPU @ 2.0GHz", "threads": 2, "platform": "Linux", "hostname": "synthetic",
           "git_commit": "0123456789abcdef", "git_dirty": False, "omp_num_threads": None,
           "mkl_num_threads": None, "governor": "performance", "loadavg": [0.5, 0.4, 0.3]}
    records: list[dict[str, Any]] = [{
        "kind": "header", "schema": 1, "run_id": run_id, "created": "2025-01-01T00:00:00Z",
        "command": ["zoo", "profile", "--synthetic"], "env": env,
        "settings": {"lengths": lengths, "mixers": list(mixers), "modes": [mode], "scope": scope,
                     "batch": batch, "dim": dim, "heads": heads, "dtype": "fp32", "device": "cpu",
                     "isolate": True, "timeout_s": 600, "memory_budget_bytes": budget_bytes,
                     "baseline": "softmax", "preset": None},
    }]
    factor = 3.0 if mode == "train" else 1.0
    for label, (k_time, k_mem, b_time, c_mem) in mixers.items():
        oom_at = None
        for T in lengths:
            cell: dict[str, Any] = {
                "kind": "cell", "schema": 1, "run_id": run_id, "key": f"{label}-{scope}-{mode}-{T}",
                "mixer": label.split("[")[0], "label": label, "config": {"dim": dim, "heads": heads},
                "scope": scope, "mode": mode, "T": T, "batch": batch, "dim": dim, "heads": heads,
                "depth": depth, "dtype": "fp32", "device": "cpu", "causal": False, "status": "ok",
                "reason": None, "inferred": False, "threads": 2, "compute_dtype": "float32",
                "sdpa_backend": "math" if label.startswith("softmax") else None, "checkpointing": False,
                "params": 4 * dim * dim + 4 * dim, "mem_method": "vmhwm",
                "flops_analytic": factor * (4.0 * dim * T ** k_time * 64),
                "flops_counted": factor * (4.0 * dim * T ** k_time * 64) * (1.0 if label != "fnet" else 0.3),
                "started_at": "2025-01-01T00:00:01Z", "cpu_heap": {"memory": "tracking", "timing": "caching"},
            }
            cell["flops_disagree"] = label == "fnet"
            mem = c_mem * T**k_mem * factor
            if oom_at is not None:
                cell.update(status="skipped", reason=f"after OOM at T={oom_at}", inferred=True)
            elif mem > budget_bytes:
                oom_at = T
                cell.update(status="oom", reason="DefaultCPUAllocator: can't allocate memory")
            else:
                median = factor * (overhead_s + b_time * T**k_time)
                samples = (median * np.exp(rng.normal(0.0, noise, size=15))).tolist()
                q20, q25, q50, q75, q80 = np.percentile(samples, [20, 25, 50, 75, 80])
                cell.update(
                    time_median_s=float(q50), time_iqr_s=float(q75 - q25), time_p20_s=float(q20),
                    time_p80_s=float(q80), time_n=len(samples), time_samples=samples,
                    noisy=bool((q75 - q25) / q50 > 0.1), steps_per_s=float(1.0 / q50),
                    mem_peak_bytes=float(round(mem)), mem_abs_peak_bytes=float(round(mem + 2**27)),
                    mem_tensor_peak_bytes=float(round(mem * 0.95)), mem_disagree=False,
                    mem_predicted_bytes=None, wall_s=float(q50 * 20 + 0.5),
                )
            records.append(cell)
    if fidelity:
        for label in mixers:
            if label.startswith("softmax"):
                continue
            for j, T in enumerate(lengths[:4]):
                err = 0.05 * (1 + 0.3 * j) * (1 + 0.1 * (_hash(label) % 5))
                records.append({
                    "kind": "fidelity", "schema": 1, "run_id": run_id, "mixer": label, "label": label,
                    "config": {"dim": 64, "heads": 2}, "T": T, "batch": 1, "dim": 64, "heads": 2,
                    "dtype": "fp32", "causal": False, "status": "ok", "reason": None,
                    "rel_error": err, "rel_error_std": err * 0.1, "cosine": 1 - err**2 / 2, "n_seeds": 3,
                })
    return records


def _hash(text: str) -> int:
    return sum(map(ord, text))


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, allow_nan=False) + "\n")
    return path

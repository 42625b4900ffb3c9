"""The profiler's CUDA-only checks (issue 17), in one short run on a GPU machine.

    python scripts/gpu_check.py [OUT_DIR]        # exit 0: every check passed; 1: one failed; 3: no GPU

Each check prints PASS/FAIL with what it saw:

1. a bf16 sweep of softmax (sdpa) and softmax[impl=eager], forward and train, at 1k..4k: every cell
   ``ok``, ``warmup_calls >= 2``, ``cuda_memory_fraction`` set, ``sdpa_backend`` recorded for sdpa;
   the header records ``float32_matmul_precision``;
2. causal FLOPs: a causal softmax cell's counted FLOPs match the analytic (halved) formula;
3. the memory budget on the GPU: softmax[impl=eager] at 16k with a 256 MiB budget, the fake
   prediction switched off, is ``oom`` from the allocator's cap (not an inferred prediction);
4. fork refused for CUDA cells (a clear error, nothing written).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cells(path: Path) -> tuple[dict, list[dict]]:
    from profiler.records import read_records

    recs = list(read_records(path))
    return next(r for r in recs if r["kind"] == "header"), [r for r in recs if r["kind"] == "cell"]


def check(name: str, ok: bool, seen: str, failures: list[str]) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {seen}")
    if not ok:
        failures.append(name)


def main(argv: list[str]) -> int:
    import torch

    from profiler import run_profile
    from profiler.cases import Cell
    from profiler.sweep import run_sweep
    from zoo.errors import ZooValueError

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 3
    out = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    common = dict(device="cuda", dtype="bf16", time_budget=0.2, progress=False, overwrite=True)

    path = run_profile(mixers="softmax,softmax[impl=eager]", lengths="1k..4k", out=out / "sweep.jsonl", **common)
    header, cells = _cells(path)
    bad = [(c["label"], c["T"], c["mode"], c["status"], c["reason"]) for c in cells if c["status"] != "ok"]
    check("every cell ok", not bad, f"{len(cells)} cells, not ok: {bad}", failures)
    warm = sorted({c.get("warmup_calls") for c in cells})
    check("warmup_calls >= 2", all(w is not None and w >= 2 for w in warm), f"warmup_calls seen {warm}", failures)
    fractions = sorted({c.get("cuda_memory_fraction") for c in cells}, key=str)
    check("allocator capped", all(f for f in fractions), f"cuda_memory_fraction {fractions}", failures)
    backends = sorted({str(c.get("sdpa_backend")) for c in cells if c["label"] == "softmax"})
    check("sdpa_backend recorded", "None" not in backends, f"softmax backends {backends}", failures)
    tf32 = header["env"].get("float32_matmul_precision")
    check("TF32 setting in the header", tf32 is not None, f"float32_matmul_precision={tf32}", failures)

    path = run_profile(mixers="softmax", lengths="2k", modes="forward,train", causal=True, out=out / "causal.jsonl",
                       **common)
    _, cells = _cells(path)
    ratios = [c["flops_counted"] / c["flops_analytic"] for c in cells if c.get("flops_counted") and c.get("flops_analytic")]
    check("causal FLOPs halved", len(ratios) == 2 and all(0.9 < r < 1.1 for r in ratios),
          f"counted / analytic = {[round(r, 3) for r in ratios]} ({[c['sdpa_backend'] for c in cells]})", failures)

    path = run_profile(mixers="softmax[impl=eager]", lengths="16k", modes="forward", out=out / "budget.jsonl",
                       memory_budget="256m", predict=False, **common)
    _, cells = _cells(path)
    c = cells[0]
    check("over budget is oom on the GPU", c["status"] == "oom" and not c["inferred"],
          f"status={c['status']} inferred={c['inferred']} reason={c['reason']}", failures)

    cell = Cell(label="x", mixer="softmax", overrides={}, config={}, scope="mixer", mode="forward", T=8, batch=1, dim=8,
                heads=1, depth=None, dtype="fp32", device="cuda")
    try:
        run_sweep([cell], out=str(out / "fork.jsonl"), executor="fork")
        refused = "no error"
    except ZooValueError as exc:
        refused = str(exc)
    check("fork refused for CUDA", "fork cannot serve CUDA" in refused and not (out / "fork.jsonl").exists(),
          refused, failures)
    print(f"{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)} (records in {out})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Local/sparse attention benchmark (issue 3): zoo `longformer` vs transformers, and the scaling
of `longformer` and `bigbird`.

1. Peer comparison at T = 16384, D = 256, 4 heads, B = 1, fp32, CPU, one-sided window 256:
   the zoo's ``longformer`` against transformers' ``LongformerSelfAttention``
   (``attention_window=512``, i.e. the same one-sided 256) followed by a Linear(D, D), so both
   sides include the output projection W_O (the zoo mixer has it; in transformers it lives in
   ``LongformerSelfOutput``). Forward (no_grad) and forward + backward, interleaved in the same
   run, plus the peak resident growth of one call in a fresh subprocess. Targets: zoo at least
   1.5x faster in both modes, with lower peak memory.
2. Scaling: ``longformer`` and ``bigbird`` (defaults: window 256; block 64, 3 random blocks) at
   T = 4k, 8k, 16k; fitted log-log exponent of time and peak memory; target <= 1.15.

    python benchmarks/bench_local.py                  # both parts, writes bench-out/bench_local.json
    python benchmarks/bench_local.py --part peer --reps 3 --no-memory      # quick peer check
    python benchmarks/bench_local.py --part scaling --lengths 1024 2048    # smoke run

The transformers peer is skipped with a message when the package is not installed. The CPU heap
is the profiler's (``profiler/compare.py``: caching for timing, tracking for the memory
subprocesses); ``ZOO_BENCH_HEAP=system`` times under glibc's default dynamic mmap threshold, under
which BigBird's gathered key blocks (32 MiB at T = 4k) are recycled at 4k and page-fault on every
call at 16k, bending the time curve (exponent ~1.25).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.compare import Case, compare, fit_exponent, print_results, ratio, save_results, module_step  # noqa: E402

SCALING_MIXERS = ("longformer", "bigbird")
SPEEDUP_TARGET = 1.5
EXPONENT_TARGET = 1.15
ZOO_CASE = "zoo longformer"
HF_CASE = "transformers LongformerSelfAttention"


def build_zoo(mode: str, name: str, T: int, dim: int = 256, heads: int = 4, batch: int = 1, **overrides):
    """A zoo mixer with its default hyper-parameters (plus overrides) on a (batch, T, dim) fp32 input."""
    import torch

    from zoo import create_mixer

    torch.manual_seed(0)
    mixer = create_mixer(name, dim=dim, heads=heads, **overrides)
    x = torch.randn(batch, T, dim)
    return module_step(mode, mixer, mixer, x)


def build_hf_longformer(mode: str, T: int, window: int = 256, dim: int = 256, heads: int = 4, batch: int = 1):
    """transformers' LongformerSelfAttention (attention_window = 2 * window) + a Linear(D, D) output."""
    import torch
    from torch import nn
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    torch.manual_seed(0)
    config = LongformerConfig(
        attention_window=[2 * window],
        hidden_size=dim,
        num_attention_heads=heads,
        attention_probs_dropout_prob=0.0,
    )
    module = nn.ModuleDict({"attn": LongformerSelfAttention(config, layer_id=0), "out": nn.Linear(dim, dim)})
    x = torch.randn(batch, T, dim)
    # the model-level additive mask: 0 = local attention (no padding, no global tokens here)
    attention_mask = torch.zeros(batch, T)
    is_index_masked = attention_mask < 0
    is_index_global_attn = attention_mask > 0

    def call(inp):
        h = module["attn"](
            inp,
            attention_mask=attention_mask,
            is_index_masked=is_index_masked,
            is_index_global_attn=is_index_global_attn,
            is_global_attn=False,
        )[0]  # (B, T, D)
        return module["out"](h)

    return module_step(mode, module, call, x)


def run_peer(args) -> tuple[list[dict], list[dict], bool]:
    if importlib.util.find_spec("transformers") is None:
        print("transformers is not installed: skipping the peer comparison (pip install transformers)")
        return [], [], True
    T = args.peer_length
    cases = [
        Case(ZOO_CASE, "benchmarks/bench_local.py:build_zoo", {"name": "longformer", "T": T, "window": 256}),
        Case(HF_CASE, "benchmarks/bench_local.py:build_hf_longformer", {"T": T, "window": 256}),
    ]
    results = compare(cases, modes=tuple(args.modes), reps=args.reps, memory=args.memory, threads=args.threads)
    print(f"\n== peer comparison, T={T}, D=256, 4 heads, B=1, fp32, window 256 one-sided, threads={args.threads}")
    print_results(results, baseline=HF_CASE)
    ok = True
    summary = []
    for mode in args.modes:
        speedup = 1.0 / ratio(results, ZOO_CASE, HF_CASE, mode, "time")
        mem = ratio(results, ZOO_CASE, HF_CASE, mode, "memory")
        row_ok = speedup >= SPEEDUP_TARGET and (mem is None or mem < 1.0)
        ok &= row_ok
        mem_txt = f"{mem:.3f}" if mem is not None else "-"
        print(
            f"{mode:8s} speed-up zoo vs transformers {speedup:5.2f}x (target >= {SPEEDUP_TARGET}), "
            f"peak memory zoo/transformers {mem_txt} (target < 1): {'ok' if row_ok else 'MISSED'}"
        )
        summary.append({"mode": mode, "speedup": speedup, "memory_ratio": mem, "ok": row_ok})
    return results, summary, ok


def run_scaling(args) -> tuple[list[dict], list[dict], bool]:
    cases = [
        Case(f"{name} T={T}", "benchmarks/bench_local.py:build_zoo", {"name": name, "T": T})
        for name in args.mixers
        for T in args.lengths
    ]
    results = compare(cases, modes=tuple(args.modes), reps=args.reps, memory=args.memory, threads=args.threads)
    print(f"\n== scaling, T = {args.lengths}, D=256, 4 heads, B=1, fp32, threads={args.threads}")
    print_results(results)
    ok = True
    summary = []
    print(f"\nfitted log-log exponents (target <= {EXPONENT_TARGET})")
    print(f"{'mixer':12s} {'mode':8s} {'time':>6s} {'memory':>7s}")
    for name in args.mixers:
        for mode in args.modes:
            rows = sorted(
                (r for r in results if r["kwargs"]["name"] == name and r["mode"] == mode), key=lambda r: r["kwargs"]["T"]
            )
            lengths = [r["kwargs"]["T"] for r in rows]
            t_exp = fit_exponent(lengths, [r["time_median_s"] for r in rows])
            mems = [r.get("mem_peak_bytes") for r in rows]
            m_exp = fit_exponent(lengths, mems) if args.memory and all(mems) else None
            row_ok = t_exp <= EXPONENT_TARGET and (m_exp is None or m_exp <= EXPONENT_TARGET)
            ok &= row_ok
            mem_txt = f"{m_exp:7.3f}" if m_exp is not None else "      -"
            print(f"{name:12s} {mode:8s} {t_exp:6.3f} {mem_txt} {'ok' if row_ok else 'ABOVE TARGET'}")
            summary.append({"mixer": name, "mode": mode, "time_exponent": t_exp, "memory_exponent": m_exp})
    return results, summary, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "peer", "scaling"], default="all")
    parser.add_argument("--peer-length", type=int, default=16384)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--mixers", nargs="+", default=list(SCALING_MIXERS), choices=SCALING_MIXERS)
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the subprocess memory runs")
    args = parser.parse_args(argv)
    results, report, ok = [], {}, True
    if args.part in ("all", "peer"):
        res, summary, part_ok = run_peer(args)
        results += res
        report["peer"] = summary
        ok &= part_ok
    if args.part in ("all", "scaling"):
        res, summary, part_ok = run_scaling(args)
        results += res
        report["exponents"] = summary
        ok &= part_ok
    path = save_results(results + [{"summary": report, "speedup_target": SPEEDUP_TARGET, "exponent_target": EXPONENT_TARGET}], "bench_local")
    print(f"\nwrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

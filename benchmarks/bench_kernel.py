"""Kernel / landmark / projection mixers: `nystrom` against the PoNet repo's LRA Nyström, and the
length scaling of `nystrom`, `performer` (bidirectional and causal) and `linformer`.

    python benchmarks/bench_kernel.py --ponet-repo /tmp/refs/PoNet          # everything
    python benchmarks/bench_kernel.py --part compare --ponet-repo /tmp/refs/PoNet
    python benchmarks/bench_kernel.py --part scaling --lengths 4096 8192 16384

Targets (issue 4): at T = 16384, D = 256, 4 heads, B = 1, fp32 CPU, `nystrom` (64 landmarks,
conv 35) is no slower than PoNet's `examples/LRA/code/attention.py` Attention with attn_type
"nystrom" (the same 64 landmarks and conv 35; both include the q/k/v/output projections), forward
and forward + backward. Over T = 4k..16k the fitted log-log exponent of time and of peak memory is
<= 1.15 for every mixer here. The peer is loaded from ``--ponet-repo`` at run time (never copied
into the project); without it the comparison is skipped with a message. JSON goes to
``bench-out/bench_kernel.json`` (``bench_kernel_<part>.json`` for a single part).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.compare import Case, compare, fit_exponent, print_results, ratio, save_results, module_step  # noqa: E402

SCRIPT = "benchmarks/bench_kernel.py"
D, H = 256, 4
TARGET_EXPONENT = 1.15


def build_zoo(mode: str, name: str, T: int, causal: bool = False, **overrides):
    """A zoo mixer at the benchmark size (zoo defaults unless overridden), fp32, B = 1."""
    import torch

    from zoo import create_mixer

    torch.manual_seed(0)
    m = create_mixer(name, dim=D, heads=H, **overrides).train(mode == "train")
    x = torch.randn(1, T, D)
    return module_step(mode, m, lambda inp: m(inp, causal=causal), x)


def build_ponet_nystrom(mode: str, repo: str, T: int, landmarks: int = 64, conv: int = 35):
    """PoNet LRA `Attention` (projections + NystromAttention + output projection), loaded by path."""
    import torch

    code = Path(repo) / "examples" / "LRA" / "code"
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # its torch.cuda.amp.autocast call
    from attention import Attention  # the peer's module, from its own repository

    config = {
        "transformer_dim": D,
        "head_dim": D // H,
        "num_head": H,
        "attn_type": "nystrom",
        "attention_grad_checkpointing": False,
        "attention_dropout": 0.0,
        "num_landmarks": landmarks,
        "seq_len": T,
        "conv_kernel_size": conv,
    }
    torch.manual_seed(0)
    m = Attention(config).train(mode == "train")
    x = torch.randn(1, T, D)
    mask = torch.ones(1, T)  # the LRA code's float keep-mask
    return module_step(mode, m, lambda inp: m(inp, mask), x)


def ponet_available(repo: str | None) -> bool:
    return bool(repo) and (Path(repo) / "examples" / "LRA" / "code" / "attention_nystrom.py").is_file()


def run_compare(repo: str | None, T: int, reps: int, threads: int | None) -> tuple[list[dict], bool]:
    if not ponet_available(repo):
        print(f"skipping the PoNet comparison: no examples/LRA/code/attention_nystrom.py under --ponet-repo {repo!r}")
        return [], True
    cases = [
        Case("zoo nystrom", f"{SCRIPT}:build_zoo", {"name": "nystrom", "T": T}),
        Case("ponet-lra nystrom", f"{SCRIPT}:build_ponet_nystrom", {"repo": str(repo), "T": T}),
    ]
    results = compare(cases, modes=("forward", "train"), reps=reps, threads=threads)
    print(f"\n== nystrom vs PoNet LRA Nyström, T={T}, D={D}, H={H}, B=1, fp32, 64 landmarks, conv 35 ==")
    print_results(results, baseline="ponet-lra nystrom")
    ok = True
    for mode in ("forward", "train"):
        t = ratio(results, "zoo nystrom", "ponet-lra nystrom", mode, "time")
        mem = ratio(results, "zoo nystrom", "ponet-lra nystrom", mode, "memory")
        verdict = "OK" if t is not None and t <= 1.0 else "MISSED"
        ok &= verdict == "OK"
        print(f"{mode:8s} time zoo/ponet = {t:.3f} (target <= 1.0: {verdict}); memory zoo/ponet = {mem}")
    return results, ok


SCALING = [
    ("nystrom", "nystrom", False),
    ("performer", "performer", False),
    ("performer causal", "performer", True),
    ("linformer", "linformer", False),
]


def run_scaling(lengths: list[int], reps: int, threads: int | None) -> tuple[list[dict], list[dict]]:
    cases = [
        Case(f"{label} T={T}", f"{SCRIPT}:build_zoo", {"name": name, "T": T, "causal": causal})
        for label, name, causal in SCALING
        for T in lengths
    ]
    results = compare(cases, modes=("forward", "train"), reps=reps, threads=threads)
    print(f"\n== scaling over T = {lengths}, D={D}, H={H}, B=1, fp32 ==")
    print_results(results)
    fits = []
    print(f"\n{'mixer':20s} {'mode':8s} {'time exp':>9s} {'mem exp':>9s}  (target <= {TARGET_EXPONENT})")
    for label, _, _ in SCALING:
        for mode in ("forward", "train"):
            rows = [r for r in results if r["case"].startswith(label + " T=") and r["mode"] == mode]
            ts = [r["kwargs"]["T"] for r in rows]
            t_exp = fit_exponent(ts, [r["time_median_s"] for r in rows])
            mems = [r.get("mem_peak_bytes") for r in rows]
            m_exp = fit_exponent(ts, mems) if all(mems) else None
            ok = t_exp <= TARGET_EXPONENT and m_exp is not None and m_exp <= TARGET_EXPONENT
            fits.append({"mixer": label, "mode": mode, "time_exponent": t_exp, "memory_exponent": m_exp, "ok": ok})
            m_txt = f"{m_exp:9.3f}" if m_exp is not None else f"{'-':>9s}"
            print(f"{label:20s} {mode:8s} {t_exp:9.3f} {m_txt}  {'OK' if ok else 'MISSED'}")
    return results, fits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "compare", "scaling"), default="all")
    p.add_argument("--ponet-repo", default=None, help="path to a checkout of lxchtan/PoNet")
    p.add_argument("--T", type=int, default=16384, help="length of the PoNet comparison")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    out: dict = {"config": vars(args)}
    ok = True
    if args.part in ("all", "compare"):
        out["compare"], ok = run_compare(args.ponet_repo, args.T, args.reps, args.threads)
    if args.part in ("all", "scaling"):
        out["scaling"], out["fits"] = run_scaling(args.lengths, args.reps, args.threads)
        ok &= all(f["ok"] for f in out["fits"])
    path = save_results([out], "bench_kernel" if args.part == "all" else f"bench_kernel_{args.part}")
    print(f"\nwrote {path}; {'every target met' if ok else 'a target was MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 2's performance targets, measured side by side with the peers in one run.

At T = 16384, D = 256, 4 heads, B = 1, fp32 on CPU (forward under no_grad, and forward + backward):

* ``ponet``   at least as fast as the paper's own PoNet (lxchtan/PoNet, ``examples/LRA/code``:
  the ``Attention`` block with ``attn_type="ponet"``, i.e. its five projections, PoNetAttention
  and the output Linear), with no more peak memory. The peer is loaded at run time from
  ``--ponet-repo`` (a checkout of lxchtan/PoNet) and skipped with a message when absent.
  Two zoo rows: the zoo's default segments (ceil(T / 64) = 256 tokens) and
  ``faithful_segments=True`` (the reference's floor(T / 64) + 1 = 257, a shorter last segment).
  Both PoNets get the same all-real float/bool mask (the LRA code always takes one).
* ``fnet``    at least as fast as transformers' ``FNetBasicFourierTransform`` (fftn path).
* ``softmax`` (impl sdpa) within 5% of a bare ``F.scaled_dot_product_attention`` call between
  the same four projections.

    python benchmarks/bench_foundation.py --ponet-repo /tmp/refs/PoNet
    python benchmarks/bench_foundation.py --only fnet,ponet --T 4096 --reps 5 --no-memory

Prints a table per mixer (median, IQR, peak memory, ratios to the peer) and writes
``bench-out/bench_foundation[_<subset>]_T<T>.json``. Before timing, the zoo PoNet (faithful segments) is checked
against the reference on the same weights at a short length, and the zoo FNet against
transformers', so the timed callables compute the same thing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from profiler.compare import Case, check_targets, compare, module_step, print_results, random_input, ratio, save_results  # noqa: E402

SCRIPT = "benchmarks/bench_foundation.py"
PONET_CODE = Path("examples") / "LRA" / "code"


# --- shared ------------------------------------------------------------------------------------


def load_reference_ponet(repo: str):
    """The LRA ``Attention`` class of lxchtan/PoNet, imported by path (its modules import each
    other by bare name, so the code folder goes on sys.path)."""
    code = Path(repo) / PONET_CODE
    if not (code / "attention.py").is_file():
        raise FileNotFoundError(f"--ponet-repo: expected {code / 'attention.py'} (a lxchtan/PoNet checkout)")
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    # its forward wraps the core in torch.cuda.amp.autocast(enabled=False): deprecated, harmless on CPU
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*autocast.*")
    spec = importlib.util.spec_from_file_location("_ponet_lra_attention", code / "attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Attention


def make_reference_ponet(repo: str, D: int, heads: int, num_segments: int) -> torch.nn.Module:
    Attention = load_reference_ponet(repo)
    config = {
        "transformer_dim": D,
        "head_dim": D // heads,
        "num_head": heads,
        "attn_type": "ponet",
        "attention_grad_checkpointing": False,
        "attention_dropout": 0.0,
        "segment_num": num_segments,
    }
    return Attention(config)


def copy_weights_to_reference(zoo_mixer, ref) -> None:
    """Same parameters in both: the reference's W_v is PoNet's gate ("dense_o"), ff is W_O."""
    pairs = [
        (ref.W_q, zoo_mixer.q_proj),
        (ref.W_k, zoo_mixer.k_proj),
        (ref.W_v, zoo_mixer.gate_proj),
        (ref.W_segment, zoo_mixer.segment_proj),
        (ref.W_local, zoo_mixer.local_proj),
        (ref.ff, zoo_mixer.out_proj),
    ]
    with torch.no_grad():
        for dst, src in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def make_zoo_ponet(D: int, heads: int, num_segments: int, faithful: bool):
    from zoo import create_mixer

    return create_mixer("ponet", dim=D, heads=heads, num_segments=num_segments, faithful_segments=faithful)


def build_zoo_ponet(mode, T=16384, D=256, heads=4, B=1, num_segments=64, faithful=False):
    torch.manual_seed(0)
    m = make_zoo_ponet(D, heads, num_segments, faithful)
    mask = torch.ones(B, T, dtype=torch.bool)
    return module_step(mode, m, lambda x: m(x, mask), random_input(B, T, D))


def build_ref_ponet(mode, T=16384, D=256, heads=4, B=1, num_segments=64, repo=""):
    torch.manual_seed(0)
    m = make_reference_ponet(repo, D, heads, num_segments)
    mask = torch.ones(B, T)  # the LRA code's float keep-mask
    return module_step(mode, m, lambda x: m(x, mask), random_input(B, T, D))


def check_ponet_against_reference(repo: str, T: int = 300, D: int = 32, heads: int = 4, S: int = 8) -> float:
    """Max |zoo - reference| on the same weights, with the reference's segment formula."""
    torch.manual_seed(0)
    zoo_m = make_zoo_ponet(D, heads, S, faithful=True)
    ref = make_reference_ponet(repo, D, heads, S)
    copy_weights_to_reference(zoo_m, ref)
    x = torch.randn(2, T, D)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, T // 2 :] = False  # ragged: exercises both codes' masking
    with torch.no_grad():
        y = zoo_m(x, mask)
        y_ref = ref(x, mask.float()) * mask[..., None]  # the reference leaves W_O's bias on pad rows
    # the faithful segments use the padded length in both codes; only row 0 has N = T real tokens,
    # and row 1's segment maxima are also over real tokens only in both (pad rows at -1e4 / NEG)
    return float((y - y_ref).abs().max())


# --- FNet --------------------------------------------------------------------------------------


def build_zoo_fnet(mode, T=16384, D=256, B=1):
    from zoo import create_mixer

    m = create_mixer("fnet", dim=D, heads=4)
    return module_step(mode, m, lambda x: m(x), random_input(B, T, D))


def make_hf_fnet(D: int):
    from transformers import FNetConfig
    from transformers.models.fnet.modeling_fnet import FNetBasicFourierTransform

    return FNetBasicFourierTransform(FNetConfig(hidden_size=D, use_tpu_fourier_optimizations=False))


def build_hf_fnet(mode, T=16384, D=256, B=1):
    m = make_hf_fnet(D)
    return module_step(mode, m, lambda x: m(x)[0], random_input(B, T, D))


def check_fnet_against_transformers(T: int = 96, D: int = 32) -> float:
    from zoo import create_mixer

    x = torch.randn(2, T, D)
    with torch.no_grad():
        return float((create_mixer("fnet", dim=D, heads=4)(x) - make_hf_fnet(D)(x)[0]).abs().max())


# --- softmax -----------------------------------------------------------------------------------


def build_zoo_softmax(mode, T=16384, D=256, heads=4, B=1):
    from zoo import create_mixer

    torch.manual_seed(0)
    m = create_mixer("softmax", dim=D, heads=heads, impl="sdpa")
    return module_step(mode, m, lambda x: m(x), random_input(B, T, D))


def build_bare_sdpa(mode, T=16384, D=256, heads=4, B=1):
    """The same four nn.Linear projections around one bare SDPA call (no checks, no masks)."""
    from zoo import create_mixer

    torch.manual_seed(0)
    m = create_mixer("softmax", dim=D, heads=heads, impl="sdpa")  # only for its Linear modules
    P = D // heads

    def bare(x):
        Bx, Tx, _ = x.shape
        q = m.q_proj(x).view(Bx, Tx, heads, P).transpose(1, 2)  # (B, H, T, P)
        k = m.k_proj(x).view(Bx, Tx, heads, P).transpose(1, 2)  # (B, H, T, P)
        v = m.v_proj(x).view(Bx, Tx, heads, P).transpose(1, 2)  # (B, H, T, P)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, P)
        return m.out_proj(o.transpose(1, 2).reshape(Bx, Tx, D))  # (B, T, D)

    return module_step(mode, m, bare, random_input(B, T, D))


# --- main --------------------------------------------------------------------------------------


def _ponet_part(args, shape: dict, run: dict):
    cases = [
        Case("zoo ponet", f"{SCRIPT}:build_zoo_ponet", {**shape, "heads": args.heads}),
        Case("zoo ponet faithful", f"{SCRIPT}:build_zoo_ponet", {**shape, "heads": args.heads, "faithful": True}),
    ]
    baseline = None
    repo = args.ponet_repo
    if repo and (Path(repo) / PONET_CODE / "attention.py").is_file():
        err = check_ponet_against_reference(repo)
        print(f"ponet: zoo (faithful segments) vs reference on the same weights: max |diff| = {err:.2e}")
        if err > 1e-4:
            print("ponet: the reference disagrees with the zoo; timings would compare different things")
            return None
        baseline = "paper ponet (LRA code)"
        cases.append(Case(baseline, f"{SCRIPT}:build_ref_ponet", {**shape, "heads": args.heads, "repo": str(Path(repo).resolve())}))
    else:
        print(f"ponet: paper code skipped: --ponet-repo {repo!r} has no {PONET_CODE / 'attention.py'} "
              "(fetch lxchtan/PoNet and pass its path)")
    results = compare(cases, **run)
    print_results(results, baseline)
    return results, ([("zoo ponet", baseline), ("zoo ponet faithful", baseline)] if baseline else [])


def _fnet_part(args, shape: dict, run: dict):
    try:
        err = check_fnet_against_transformers()
    except ImportError as exc:
        print(f"fnet: transformers not importable ({exc}); timing the zoo only")
        cases, baseline = [Case("zoo fnet", f"{SCRIPT}:build_zoo_fnet", shape)], None
    else:
        print(f"fnet: zoo vs transformers FNetBasicFourierTransform: max |diff| = {err:.2e}")
        baseline = "transformers FNetBasicFourierTransform"
        cases = [Case("zoo fnet", f"{SCRIPT}:build_zoo_fnet", shape), Case(baseline, f"{SCRIPT}:build_hf_fnet", shape)]
    results = compare(cases, **run)
    print_results(results, baseline)
    return results, ([("zoo fnet", baseline)] if baseline else [])


def _softmax_part(args, shape: dict, run: dict):
    baseline = "bare F.sdpa + same projections"
    cases = [
        Case("zoo softmax sdpa", f"{SCRIPT}:build_zoo_softmax", {**shape, "heads": args.heads}),
        Case(baseline, f"{SCRIPT}:build_bare_sdpa", {**shape, "heads": args.heads}),
    ]
    results = compare(cases, **run)
    print_results(results, baseline)
    return results, [("zoo softmax sdpa", baseline)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ponet-repo", default=None, help="path to a lxchtan/PoNet checkout (peer for ponet)")
    ap.add_argument("--only", default="ponet,fnet,softmax", help="comma-separated subset of ponet,fnet,softmax")
    ap.add_argument("--T", type=int, default=16384, help="sequence length")
    ap.add_argument("--D", type=int, default=256, help="model width")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--reps", type=int, default=7, help="interleaved rounds per mode")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="timing budget per mode and mixer")
    ap.add_argument("--modes", default="forward,train", help="comma-separated subset of forward,train")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"ponet", "fnet", "softmax"}
    if unknown:
        ap.error(f"--only: expected names from ponet,fnet,softmax, got {', '.join(sorted(unknown))}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or set(modes) - {"forward", "train"}:
        ap.error(f"--modes: expected names from forward,train, got {args.modes!r}")
    shape = {"T": args.T, "D": args.D}
    run = dict(modes=modes, reps=args.reps, memory=args.memory, threads=args.threads, max_seconds=args.max_seconds)
    print(f"T={args.T} D={args.D} heads={args.heads} B=1 fp32 CPU, torch {torch.__version__}, threads={args.threads or torch.get_num_threads()}")
    all_results, targets = [], []

    for name, part in (("ponet", _ponet_part), ("fnet", _fnet_part), ("softmax", _softmax_part)):
        if name in only:
            got = part(args, shape, run)
            if got is None:  # the peer disagrees with the zoo: timings would compare different things
                return 1
            results, new_targets = got
            all_results += results
            targets += new_targets

    print("\nratios (zoo / peer; time = median of per-round ratios; target: ponet, fnet <= 1, softmax <= 1.05)")
    checks = []
    for zoo_case, peer in targets:
        limit = 1.05 if "softmax" in zoo_case else 1.0
        for mode in modes:
            t = ratio(all_results, zoo_case, peer, mode, "time")
            m = ratio(all_results, zoo_case, peer, mode, "memory")
            checks.append((f"{zoo_case} / {peer} {mode} time", t, limit))
            if "ponet" in zoo_case and args.memory:  # "no more peak memory than the paper's"
                checks.append((f"{zoo_case} / {peer} {mode} peak memory", m, 1.0))
    name = "bench_foundation" if only == {"ponet", "fnet", "softmax"} else "bench_foundation_" + "_".join(sorted(only))
    path = save_results(all_results, f"{name}_T{args.T}")
    print(f"wrote {path}")
    return check_targets(checks)


if __name__ == "__main__":
    raise SystemExit(main())

"""Parity with fla's pure-PyTorch delta-rule references (fp32), loaded by file path at run time.

fla-core's ``fla/ops/delta_rule/naive.py`` and ``fla/ops/gated_delta_rule/naive.py`` import only
torch and einops, so they load without Triton or fla's package ``__init__``. Provide them with
``pip download --no-deps fla-core -d /tmp/x`` and unzip the wheel into ``.ref/peers/`` (git-ignored)
or into the folder named by ``$ZOO_PEERS``; without them these tests skip with that reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from zoo.mixers.deltanet import delta_rule_chunked
from zoo.mixers.gated_deltanet import gated_delta_rule_chunked

ROOT = Path(os.environ.get("ZOO_PEERS") or Path(__file__).resolve().parent.parent / ".ref" / "peers")
FILES = {"delta": "fla/ops/delta_rule/naive.py", "gated": "fla/ops/gated_delta_rule/naive.py"}
REL_TOL = 1e-4  # the target: equal within 1e-4 relative in fp32


def load_peer(key: str):
    path = ROOT / FILES[key]
    if not path.is_file():
        pytest.skip(f"fla's pure-PyTorch reference {path} not found (unzip the fla-core wheel into .ref/peers or set ZOO_PEERS)")
    spec = importlib.util.spec_from_file_location(f"fla_naive_{key}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (the figure the issue's 1e-4 target is about)."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def inputs(T: int, gated: bool, B: int = 2, H: int = 4, P: int = 64):
    """The layer's operating point: L2-normalised q and k, beta in (0, 1), log decays <= 0."""
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(B, H, T, P, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, P, generator=gen), dim=-1)
    v = torch.randn(B, H, T, P, generator=gen)
    beta = torch.rand(B, H, T, generator=gen)
    g = -0.1 * torch.rand(B, H, T, generator=gen) if gated else None
    return q, k, v, beta, g


@pytest.mark.parametrize("peer_fn", ["delta_rule_chunkwise", "delta_rule_recurrence"])
def test_delta_rule_matches_fla(peer_fn):
    fla = load_peer("delta")
    q, k, v, beta, _ = inputs(256, gated=False)
    ours = delta_rule_chunked(q, k, v, beta, chunk_size=64)
    kwargs = {"chunk_size": 64} if peer_fn == "delta_rule_chunkwise" else {}
    theirs, _ = getattr(fla, peer_fn)(q, k, v, beta, **kwargs)
    err = relative_error(ours, theirs)
    print(f"deltanet vs fla {peer_fn}: max relative error {err:.2e}")
    assert err < REL_TOL, f"{peer_fn}: relative error {err:.2e} >= {REL_TOL}"


@pytest.mark.parametrize("peer_fn", ["naive_chunk_gated_delta_rule", "naive_recurrent_gated_delta_rule"])
@pytest.mark.parametrize("T", [256, 200])
def test_gated_delta_rule_matches_fla(peer_fn, T):
    fla = load_peer("gated")
    q, k, v, beta, g = inputs(T, gated=True)
    ours = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=64)
    tr = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731  fla's layout is (B, T, H, .)
    if peer_fn == "naive_chunk_gated_delta_rule":
        theirs, _ = fla.naive_chunk_gated_delta_rule(tr(q), tr(k), tr(v), tr(g), tr(beta), chunk_size=64)
    else:
        theirs, _ = fla.naive_recurrent_gated_delta_rule(tr(q), tr(k), tr(v), tr(beta), tr(g))
    err = relative_error(ours, tr(theirs))
    print(f"gated_deltanet vs fla {peer_fn} (T={T}): max relative error {err:.2e}")
    assert err < REL_TOL, f"{peer_fn}: relative error {err:.2e} >= {REL_TOL}"

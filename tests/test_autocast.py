"""Mixed precision over the registry: CPU autocast bf16 against fp32, and the dtype check at the boundary.

Each mixer runs in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)`` on the same input;
the autocast output is bf16 (as a Linear-ended module's is) and within the bf16 tolerance of fp32
(relative error of the whole tensor). Mixers whose spec says ``precision_sensitive`` (a top-k that
bf16 flips, see their docstrings) are held only to a finite output of the same scale.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_contract import build, run
from tests.tolerances import BF16_REL, FLIP_REL, rel_error
from zoo import ZooTypeError, get_spec, list_mixers

MIXERS = list_mixers()


def _inputs(dim: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 37, dim, generator=g)  # (B, T, D)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 25:] = False
    return x, mask


@pytest.mark.parametrize("name", MIXERS)
def test_autocast_bf16_matches_fp32(name):
    m = build(name)
    x, mask = _inputs(m.dim)
    y32, out_mask = run(m, x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, out_mask16 = run(m, x, mask)
    assert y16.dtype == torch.bfloat16, f"{name}: autocast output is {y16.dtype}, expected bf16"
    assert y16.shape == y32.shape and torch.isfinite(y16).all()
    padded = y16[~out_mask16]
    assert torch.equal(padded, torch.zeros_like(padded)), "padded rows stay exactly zero under autocast"
    err = rel_error(y16, y32)
    bound = FLIP_REL if get_spec(name).precision_sensitive else BF16_REL
    assert err <= bound, f"{name}: autocast bf16 relative error {err:.3g} > {bound}"


@pytest.mark.parametrize("name", MIXERS)
def test_autocast_backward(name):
    m = build(name).train()
    x, mask = _inputs(m.dim)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = run(m, x, mask)
    y.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        if p.grad is not None:
            assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), f"{name}: {pname}"


@pytest.mark.parametrize("name", MIXERS)
def test_input_dtype_must_match_module(name):
    """A bf16 module given fp32 input: the contract's TypeError naming x (was torch's mat1/mat2 error)."""
    m = build(name, dtype=torch.bfloat16)
    x, _ = _inputs(m.dim)
    with pytest.raises(ZooTypeError, match=r"x: expected dtype torch.bfloat16.*got torch.float32"):
        run(m, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts per op: allowed
        y, _ = run(m, x)
    assert torch.isfinite(y).all()

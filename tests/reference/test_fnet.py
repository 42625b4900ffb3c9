"""FNet against explicit DFT matrices (zoo/reference/fnet.py) and MIXERS.md 8.5."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tolerances import tol
from zoo import create_mixer, get_spec
from zoo.mixers.fnet import FNetConfig, real_fft2
from zoo.reference.fnet import fnet_reference

F64 = tol(torch.float64)


def make(dim=16, heads=2, **overrides):
    return create_mixer("fnet", dim=dim, heads=heads, dtype=torch.float64, **overrides)


def test_no_parameters():
    assert sum(p.numel() for p in make().parameters()) == 0


@pytest.mark.parametrize("dim, heads", [(16, 2), (15, 3), (1, 1)])  # even, odd and unit width
@pytest.mark.parametrize("T", [1, 2, 7, 16, 37])
@pytest.mark.parametrize("norm", ["backward", "ortho"])
def test_equals_explicit_dft_matrices(dim, heads, T, norm):
    m = make(dim, heads, norm=norm)
    x = torch.randn(2, T, dim, dtype=torch.float64)
    torch.testing.assert_close(m(x), fnet_reference(x, norm=norm), atol=1e-12, rtol=1e-10)


def test_half_spectrum_matches_fftn():
    x = torch.randn(3, 12, 10, dtype=torch.float64)
    torch.testing.assert_close(real_fft2(x), torch.fft.fftn(x, dim=(1, 2)).real, atol=1e-12, rtol=1e-10)


def test_masked_rows_zeroed_before_and_after():
    m = make()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 6:] = False
    y = m(x, mask)
    torch.testing.assert_close(y, fnet_reference(x, mask), atol=1e-12, rtol=1e-10)
    x_junk = x.clone()
    x_junk[1, 6:] = 1e3 * torch.randn(5, 16, dtype=torch.float64)
    assert torch.equal(m(x_junk, mask), y)  # pad values do not matter
    assert torch.equal(y[1, 6:], torch.zeros(5, 16, dtype=torch.float64))


def test_linearity():
    m = make()
    x, z = torch.randn(2, 2, 13, 16, dtype=torch.float64)
    a, b = 1.7, -0.3
    torch.testing.assert_close(m(a * x + b * z), a * m(x) + b * m(z), **F64)


def test_constant_input():
    m = make()
    T, D, c = 9, 16, 0.75
    y = m(torch.full((1, T, D), c, dtype=torch.float64))
    want = torch.zeros(1, T, D, dtype=torch.float64)
    want[0, 0, 0] = c * T * D
    torch.testing.assert_close(y, want, atol=1e-11, rtol=0)


def test_ortho_is_scaled_backward():
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    torch.testing.assert_close(make(norm="ortho")(x), make()(x) / math.sqrt(8 * 16), **F64)


@pytest.mark.parametrize("norm", ["backward", "ortho"])
@pytest.mark.parametrize("T, dim", [(5, 6), (4, 7), (1, 2)])
def test_custom_backward_matches_numerical_gradient(norm, T, dim):
    m = make(dim, 1, norm=norm)
    x = torch.randn(2, T, dim, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, T // 2 + 1 :] = False
    assert torch.autograd.gradcheck(lambda t: m(t, mask), (x,), fast_mode=True)


def test_double_backward():
    m = make(3, 1)
    x = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: m(t), (x,), fast_mode=True)


def test_gradient_matches_autograd_of_fftn():
    m = make(10, 2)
    x = torch.randn(2, 12, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 12, 10, dtype=torch.float64)
    (got,) = torch.autograd.grad(m(x), x, g)
    (want,) = torch.autograd.grad(torch.fft.fftn(x, dim=(1, 2)).real, x, g)
    torch.testing.assert_close(got, want, **F64)


def test_half_precision_runs_in_fp32_and_casts_back():
    m = create_mixer("fnet", dim=16, heads=2, dtype=torch.bfloat16)  # a bf16 module takes bf16 input
    x = torch.randn(2, 10, 16)
    y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    # fp32 inside: the only error is the bf16 rounding of the input and of the output
    torch.testing.assert_close(y.float(), m.float()(x.bfloat16().float()), atol=0.1, rtol=1e-2)


def test_not_padding_invariant_and_not_causal():
    spec = get_spec("fnet")
    assert spec.key_padding_mask is False and spec.causal is False
    m = make()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    assert not torch.allclose(m(x, mask)[:, :4], m(x[:, :4]))
    with pytest.raises(ValueError, match="causal"):
        m(x, causal=True)


def test_flops_formula():
    c = FNetConfig(dim=256, heads=4)
    assert get_spec("fnet").flops(c, 3, 1024) == pytest.approx(3 * 2.5 * 1024 * 256 * math.log2(1024 * 256))


def test_norm_validated():
    with pytest.raises(ValueError, match="norm"):
        create_mixer("fnet", norm="forward")

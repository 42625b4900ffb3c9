"""Hyena: FFT long convolutions and the layer against explicit O(T^2) sums (fp64)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.mixers.hyena import channels_first_linear, fft_long_conv
from zoo.reference.hyena import hyena_reference, long_conv_reference

F64 = tol(torch.float64)


def build(**overrides):
    defaults = {"dim": 16, "heads": 2, "filter_width": 8, "pos_bands": 2, "filter_len_scale": 32}
    defaults.update(overrides)
    torch.manual_seed(0)
    return create_mixer("hyena", dtype=torch.float64, **defaults).eval()


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("T", [1, 2, 9, 16])
def test_fft_long_conv_is_linear_not_circular(two_sided, T):
    torch.manual_seed(0)
    z = torch.randn(2, 3, T, dtype=torch.float64)
    fwd, back = torch.randn(3, T, dtype=torch.float64), torch.randn(3, T, dtype=torch.float64)
    got = fft_long_conv(z, fwd, back if two_sided else None)  # (B, C, T)
    want = long_conv_reference(z.transpose(1, 2), fwd, back if two_sided else None).transpose(1, 2)
    torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("bias", [True, False])
def test_channels_first_linear_is_the_layer_transposed_and_contiguous(bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 7, bias=bias, dtype=torch.float64)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    got = channels_first_linear(x, layer)  # (B, out, T)
    want = layer(x).transpose(1, 2)
    torch.testing.assert_close(got, want, **F64)
    assert got.shape == (3, 7, 4) and got.is_contiguous()
    w = torch.randn(3, 7, 4, dtype=torch.float64)
    grads = [torch.autograd.grad((y * w).sum(), [x, *layer.parameters()]) for y in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_layer_equals_oracle_values_and_gradients(causal, order):
    m = build(order=order)
    T = 11
    x = torch.randn(2, T, 16, dtype=torch.float64)
    mask = ragged_mask(2, T, [T, 6])
    torch.testing.assert_close(m(x, mask, causal=causal), hyena_reference(m, x, mask, causal), **F64)
    grads = []
    weights = torch.linspace(-1, 1, 16, dtype=torch.float64)
    for fn in (m, lambda *a, **k: hyena_reference(m, *a, **k)):
        m.zero_grad()
        (fn(x, mask, causal=causal) * weights).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name in grads[0]:
        if grads[0][name] is None:  # the backward taps are unused in causal mode, by both paths
            assert causal and name == "filter_backward.weight" and grads[1][name] is None
            continue
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


def test_filters_depend_on_lag_only_and_decay():
    m = build(filter_len_scale=8)
    short, long = m.filters(5, torch.float64), m.filters(40, torch.float64)
    for a, b in zip(short, long):
        torch.testing.assert_close(a, b[..., :5], **F64)
    # the window bounds every tap by max|FFN| * exp(-rate * t / L): far taps are tiny
    fwd = long[0]
    assert fwd[..., 32:].abs().max() < 1e-3 * fwd[..., :4].abs().max()


def test_positional_features():
    m = build(pos_bands=3, filter_len_scale=10)
    pe = m.positional_features(4, torch.float64, "cpu")
    assert pe.shape == (4, 7)
    t = 3 / 10
    want = [t] + [math.cos(2 * math.pi * f * t) for f in (1, 2, 3)] + [math.sin(2 * math.pi * f * t) for f in (1, 2, 3)]
    torch.testing.assert_close(pe[3], torch.tensor(want, dtype=torch.float64), **F64)


def test_bidirectional_two_sided_causal_one_sided():
    m = build()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 9:] += 1.0
    assert (m(x2)[0, :9] - m(x)[0, :9]).abs().max() > 1e-6
    torch.testing.assert_close(m(x2, causal=True)[0, :9], m(x, causal=True)[0, :9], **F64)


def test_padded_position_inside_sequence_contributes_nothing():
    m = build()
    x = torch.randn(1, 14, 16, dtype=torch.float64)
    mask = torch.ones(1, 14, dtype=torch.bool)
    mask[0, 4] = False
    x_junk = x.clone()
    x_junk[0, 4] = 100 * torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(m(x, mask), m(x_junk, mask), **F64)
    torch.testing.assert_close(m(x, mask), hyena_reference(m, x, mask), **F64)


def test_bad_config_errors():
    for field, value in [("order", 0), ("filter_width", 0), ("pos_bands", -1), ("filter_len_scale", 0), ("short_conv_size", 0)]:
        with pytest.raises(ZooError, match=field):
            create_mixer("hyena", **{field: value})

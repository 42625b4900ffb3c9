"""Mamba-2 (``mamba2``): chunked SSD == the token-by-token recurrence, values and gradients,
causal and bidirectional, masks, any T; the conv is causal and the SSD matrix is semiseparable."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.mixers.mamba2 import causal_depthwise_conv
from zoo.reference.mamba2 import conv_taps, mamba2_reference

F64 = tol(torch.float64)


def build(**overrides):
    config = {"dim": 16, "heads": 2, "d_state": 8, "chunk_size": 4}
    config.update(overrides)
    torch.manual_seed(0)
    m = create_mixer("mamba2", dtype=torch.float64, **config).eval()
    with torch.no_grad():  # non-trivial skip and norm weights
        m.D.uniform_(0.5, 1.5)
        m.norm_weight.uniform_(0.5, 1.5)
    return m


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_layer_equals_recurrence(causal, chunk):
    m = build(chunk_size=chunk)
    x = torch.randn(2, 17, 16, dtype=torch.float64)  # 17: not a multiple of the chunk
    mask = ragged_mask(2, 17, [17, 10])
    torch.testing.assert_close(m(x, mask, causal=causal), mamba2_reference(m, x, mask, causal), **F64)
    torch.testing.assert_close(m(x, causal=causal), mamba2_reference(m, x, None, causal), **F64)


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_match_recurrence(causal):
    m = build(expand=1)
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask(2, 11, [11, 6])
    grads = []
    for fn in (lambda: m(x, mask, causal=causal), lambda: mamba2_reference(m, x, mask, causal)):
        m.zero_grad()
        x.grad = None
        (fn() * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in m.named_parameters()}})
    assert set(grads[0]) == {"x", "in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                             "norm_weight", "out_proj.weight"}
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


def test_padded_junk_never_reaches_real_tokens_through_the_conv():
    m = build(d_conv=4)
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 5] = False  # a hole: the conv of tokens 6..8 reads a zero there, whatever x holds
    x_junk = x.clone()
    x_junk[0, 5] = 1e3
    for causal in (True, False):
        y = m(x, mask, causal=causal)
        torch.testing.assert_close(m(x_junk, mask, causal=causal), y, **F64)
        torch.testing.assert_close(y, mamba2_reference(m, x_junk, mask, causal), **F64)


def test_conv_is_causal_and_matches_taps():
    m = build()
    u = torch.randn(2, 9, m.conv1d.in_channels, dtype=torch.float64)
    out = causal_depthwise_conv(u, m.conv1d)
    torch.testing.assert_close(out, conv_taps(u, m.conv1d.weight, m.conv1d.bias), **F64)
    u2 = u.clone()
    u2[:, 6:] += 1.0
    torch.testing.assert_close(causal_depthwise_conv(u2, m.conv1d)[:, :6], out[:, :6], **F64)


def test_ssd_matrix_is_the_decayed_product():
    """The SSD core as a matrix: M[t, s] = C_t . B_s * exp(sum_{r=s+1..t} dt_r A) for s <= t."""
    m = build(heads=1, chunk_size=3)
    B_, H, T, N, P = 1, 1, 10, 4, 2
    q, k = torch.randn(B_, H, T, N, dtype=torch.float64), torch.randn(B_, H, T, N, dtype=torch.float64)
    v = torch.randn(B_, H, T, P, dtype=torch.float64)
    log_g = -torch.rand(B_, H, T, dtype=torch.float64)
    cum = log_g.cumsum(-1)[0, 0]
    M = torch.zeros(T, T, dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            M[t, s] = (q[0, 0, t] @ k[0, 0, s]) * torch.exp(cum[t] - cum[s])
    torch.testing.assert_close(m.scan(q, k, v, log_g, chunk=3)[0, 0], M @ v[0, 0], **F64)


def test_bad_config_errors():
    with pytest.raises(ZooError, match="d_state"):
        create_mixer("mamba2", d_state=0)
    with pytest.raises(ZooError, match="dt_max"):
        create_mixer("mamba2", dt_min=0.1, dt_max=0.01)
    with pytest.raises(ZooError, match="d_conv"):
        create_mixer("mamba2", d_conv=0)

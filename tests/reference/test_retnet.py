"""RetNet (``retnet``): chunked == recurrent == parallel, values and gradients, masks, any T."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.functional import split_heads
from zoo.mixers.retnet import retention_log_decay
from zoo.reference.retnet import gammas, retention, retnet_reference
from zoo.scan import bidirectional_scan

F64 = tol(torch.float64)


def build(**overrides):
    config = {"dim": 16, "heads": 2, "chunk_size": 4}
    config.update(overrides)
    torch.manual_seed(0)
    m = create_mixer("retnet", dtype=torch.float64, **config).eval()
    with torch.no_grad():  # a non-trivial affine GroupNorm
        m.group_norm.weight.uniform_(0.5, 1.5)
        m.group_norm.bias.uniform_(-0.5, 0.5)
    return m


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("form", ["recurrent", "parallel"])
@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_chunked_equals_recurrent_and_parallel(causal, form, chunk):
    m = build(chunk_size=chunk)
    x = torch.randn(2, 13, 16, dtype=torch.float64)  # 13: not a multiple of the chunk
    mask = ragged_mask(2, 13, [13, 8])
    torch.testing.assert_close(m(x, mask, causal=causal), retnet_reference(m, x, mask, causal, form), **F64)
    torch.testing.assert_close(m(x, causal=causal), retnet_reference(m, x, None, causal, form), **F64)


@pytest.mark.parametrize("causal", [True, False])
def test_holes_in_the_mask_neither_write_nor_decay(causal):
    m = build()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, [2, 3, 7]] = False
    y = m(x, mask, causal=causal)
    torch.testing.assert_close(y, retnet_reference(m, x, mask, causal, "parallel"), **F64)
    # the same as the sequence with the holes removed
    keep = mask[0]
    torch.testing.assert_close(y[:, keep], m(x[:, keep], causal=causal), **F64)


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_match_recurrence(causal):
    m = build(chunk_size=3)
    x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask(2, 10, [10, 6])
    grads = []
    for fn in (lambda: m(x, mask, causal=causal), lambda: retnet_reference(m, x, mask, causal)):
        m.zero_grad()
        x.grad = None
        (fn() * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in m.named_parameters()}})
    assert len(grads[0]) == 8  # x and the 7 parameters
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


def test_decays_are_the_papers():
    torch.testing.assert_close(retention_log_decay(4, dtype=torch.float64).exp(), gammas(4), **F64)
    assert gammas(3).tolist() == [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]


def test_bidirectional_core_weighs_by_distance():
    """The bidirectional scan weighs token s by gamma^|t - s| on both sides (the parallel form)."""
    m = build(dim=8, heads=1, chunk_size=4)
    T = 9
    x = torch.randn(1, T, 8, dtype=torch.float64)
    q = split_heads(m.q_proj(x), 1) * 8**-0.5  # (1, 1, T, 8)
    k, v = split_heads(m.k_proj(x), 1), split_heads(m.v_proj(x), 1)  # (1, 1, T, 8), (1, 1, T, 16)
    log_g = retention_log_decay(1, dtype=torch.float64)[None, :, None].expand(1, 1, T)  # (1, 1, T)
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().to(torch.float64)
    expected = ((1 - 2.0**-5) ** dist * (q @ k.transpose(-1, -2))) @ v
    torch.testing.assert_close(bidirectional_scan(m.scan, q, k, v, log_g, chunk=4), expected, **F64)
    assert not torch.allclose(retention(m, x, torch.ones(1, T, dtype=torch.bool), True, "parallel"), expected)


def test_bad_config_errors():
    with pytest.raises(ZooError, match="expand_v"):
        create_mixer("retnet", expand_v=0)
    with pytest.raises(ZooError, match="chunk_size"):
        create_mixer("retnet", chunk_size=0)
    with pytest.raises(ZooError, match="norm_eps"):
        create_mixer("retnet", norm_eps=-1.0)

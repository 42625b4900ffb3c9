"""Softmax attention (every impl) against the dense loop oracle and MIXERS.md 1.4."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.functional import merge_heads, split_heads
from zoo.reference.dense import allowed_from_mask, dense_attention

F64 = tol(torch.float64)
IMPLS = ["sdpa", "eager"]


def make(impl="sdpa", dtype=torch.float64):
    torch.manual_seed(0)
    return create_mixer("softmax", dim=16, heads=2, impl=impl, dtype=dtype)


def oracle(m, x, mask=None, causal=False):
    """The mixer's own projections around the dense oracle; padded rows zeroed (C2)."""
    T = x.shape[1]
    q, k, v = (split_heads(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))  # (B, H, T, P)
    allowed = allowed_from_mask(mask, T, causal)
    if mask is not None and causal:
        allowed = allowed | torch.eye(T, dtype=torch.bool)  # the zoo lets a query always see itself
    out = m.out_proj(merge_heads(dense_attention(q, k, v, allowed)))  # (B, T, D)
    return out if mask is None else out * mask[..., None]


def ragged_mask(B, T, lengths):
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_dense_oracle(impl, causal, masked):
    m = make(impl)
    T = 13
    x = torch.randn(3, T, 16, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask(3, T, [13, 8, 1]) if masked else None
    y = m(x, mask, causal=causal)
    ref = oracle(m, x, mask, causal)
    torch.testing.assert_close(y, ref, **F64)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), [x, *m.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [x, *m.parameters()])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("causal", [False, True])
def test_impls_agree_in_fp32(causal):
    x = torch.randn(2, 31, 16)
    mask = ragged_mask(2, 31, [31, 20])
    y_sdpa = make("sdpa", torch.float32)(x, mask, causal=causal)
    y_eager = make("eager", torch.float32)(x, mask, causal=causal)
    torch.testing.assert_close(y_sdpa, y_eager, **tol(torch.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_all_true_mask_equals_none(impl):
    m = make(impl)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x, torch.ones(2, 9, dtype=torch.bool)), m(x), **F64)


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_invariance(impl):
    m = make(impl)
    x = torch.randn(1, 15, 16, dtype=torch.float64)
    mask = ragged_mask(1, 15, [10])
    torch.testing.assert_close(m(x, mask)[:, :10], m(x[:, :10]), **F64)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_perturbation(impl):
    m = make(impl)
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    y = m(x, causal=True)
    x2 = x.clone()
    x2[:, 7] += 1.0
    y2 = m(x2, causal=True)
    torch.testing.assert_close(y2[:, :7], y[:, :7], **F64)
    assert (y2[:, 7:] - y[:, 7:]).abs().max() > 1e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_permutation_equivariant(impl):
    m = make(impl)
    x = torch.randn(1, 11, 16, dtype=torch.float64)
    perm = torch.randperm(11)
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm], **F64)


def test_attention_weights_sum_to_one_over_real_keys():
    """With W_V = 0 and bias 1, W_O = I, bias 0: out = sum_j P_ij * 1 = 1 on real rows only."""
    m = make("eager")
    with torch.no_grad():
        m.v_proj.weight.zero_()
        m.v_proj.bias.fill_(1.0)
        m.out_proj.weight.copy_(torch.eye(16, dtype=torch.float64))
        m.out_proj.bias.zero_()
    mask = ragged_mask(2, 10, [10, 3])
    y = m(torch.randn(2, 10, 16, dtype=torch.float64), mask, causal=True)
    torch.testing.assert_close(y, mask[..., None].double().expand(2, 10, 16), **F64)


def test_xformers_on_cpu_is_a_clear_error():
    m = create_mixer("softmax", dim=16, heads=2, impl="xformers")
    with pytest.raises(ZooError, match="impl.*xformers"):
        m(torch.randn(1, 4, 16))

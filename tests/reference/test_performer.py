"""Performer (FAVOR+) against the quadratic oracle, exact softmax, and its own invariants."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooValueError, create_mixer
from zoo.functional import split_heads
from zoo.mixers.performer import favor_attention, gaussian_orthogonal_matrix
from zoo.reference.kernels import performer_oracle

F64 = torch.float64


def _qkv(B=2, H=2, T=21, P=8, scale=1.0):
    return tuple(scale * torch.randn(B, H, T, P, dtype=F64) for _ in range(3))


def _omega(R=12, P=8, seed=0, scaling=0):
    return gaussian_orthogonal_matrix(R, P, scaling, torch.Generator().manual_seed(seed))


def _masks(B=2, T=21):
    right = torch.ones(B, T, dtype=torch.bool)
    right[1, 13:] = False
    left = torch.ones(B, T, dtype=torch.bool)
    left[0, :4] = False  # padded queries at the start see no real key in causal mode
    left[1, 9:] = False
    return [None, right, left]


@pytest.mark.parametrize("causal", [False, True])
def test_matches_quadratic_oracle_outputs_and_gradients(causal):
    om = _omega()
    for mask in _masks():
        q, k, v = (t.requires_grad_() for t in _qkv())
        ref = performer_oracle(q, k, v, om, mask, causal)
        for chunk in (1, 5, 8, 32):
            out = favor_attention(q, k, v, om, mask, causal, chunk)
            torch.testing.assert_close(out, ref, **tol(F64))
        g = torch.randn_like(out)
        grads = torch.autograd.grad((out * g).sum(), (q, k, v))
        grads_ref = torch.autograd.grad((ref * g).sum(), (q, k, v))
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, **tol(F64))


def test_mixer_equals_oracle_through_its_projections():
    m = create_mixer("performer", dim=16, heads=2, nb_features=12, chunk_size=4, dtype=F64).eval()
    x = torch.randn(2, 19, 16, dtype=F64)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[0, 11:] = False
    for causal in (False, True):
        y = m(x, mask, causal=causal)
        q, k, v = (split_heads(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))
        o = performer_oracle(q, k, v, m.omega, mask, causal)
        ref = m.out_proj(o.transpose(1, 2).reshape(2, 19, 16)) * mask[..., None]
        torch.testing.assert_close(y, ref, **tol(F64))


@pytest.mark.parametrize("causal", [False, True])
def test_error_to_exact_softmax_decreases_with_features(causal):
    B, H, T, P = 1, 2, 32, 16
    q, k, v = _qkv(B, H, T, P, scale=0.7)
    logits = q @ k.transpose(-1, -2) / P**0.5  # (B, H, T, T)
    if causal:
        logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    exact = torch.softmax(logits, dim=-1) @ v
    errors = []
    for R in (8, 64, 512):
        rel = [
            ((favor_attention(q, k, v, _omega(R, P, seed), None, causal, 16) - exact).norm() / exact.norm()).item()
            for seed in range(3)
        ]
        errors.append(sum(rel) / len(rel))
    assert errors[1] < 0.85 * errors[0] and errors[2] < 0.85 * errors[1], errors


@pytest.mark.parametrize("causal", [False, True])
def test_outputs_are_convex_combinations_of_visible_values(causal):
    q, k, _ = _qkv(scale=2.0)  # large logits stress the stabilisers
    om = _omega()
    mask = _masks()[1]
    ones = torch.ones_like(q)
    torch.testing.assert_close(favor_attention(q, k, ones, om, mask, causal, 8), ones, **tol(F64))
    v = torch.randn_like(q)
    out = favor_attention(q, k, v, om, mask, causal, 8)
    T = q.shape[2]
    for b in range(q.shape[0]):
        for i in range(T):
            visible = [j for j in range(T) if mask[b, j] and (not causal or j <= i)]
            lo = v[b, :, visible].amin(dim=1)  # (H, P)
            hi = v[b, :, visible].amax(dim=1)
            assert (out[b, :, i] >= lo - 1e-12).all() and (out[b, :, i] <= hi + 1e-12).all()


def test_padded_keys_leave_the_denominator():
    # A padded key with phi(k) != 0 (the reference zeroes K, not phi(K)) would shift every output.
    q, k, v = _qkv(B=1, T=16)
    om = _omega()
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[0, 10:] = False
    out = favor_attention(q, k, v, om, mask)
    out_short = favor_attention(q[:, :, :10], k[:, :, :10], v[:, :, :10], om)
    torch.testing.assert_close(out[:, :, :10], out_short, **tol(F64))
    k0 = k.clone()
    k0[:, :, 10:] = 0.0  # the reference's masking: phi(0) = exp(-stab) + eps > 0
    naive = favor_attention(q, k0, v * mask[:, None, :, None], om)
    assert (naive[:, :, :10] - out_short).abs().max() > 1e-3


def test_orthogonal_random_features():
    om = _omega(R=20, P=8, scaling=1)
    assert om.shape == (20, 8)
    torch.testing.assert_close(om.norm(dim=1), torch.full((20,), 8**0.5, dtype=F64))
    for block in (om[:8], om[8:16]):
        gram = block @ block.t()
        torch.testing.assert_close(gram, 8 * torch.eye(8, dtype=F64))
    norms = _omega(R=16, P=8, scaling=0).norm(dim=1)
    assert norms.std() > 0.1  # Gaussian-vector norms, not constant
    torch.testing.assert_close(_omega(seed=3), _omega(seed=3), rtol=0, atol=0)
    assert not torch.equal(_omega(seed=3), _omega(seed=4))


def test_features_from_seed_and_redraw_only_in_training():
    x = torch.randn(1, 9, 16)
    a = create_mixer("performer", dim=16, heads=2, nb_features=12, seed=5)
    b = create_mixer("performer", dim=16, heads=2, nb_features=12, seed=5)
    c = create_mixer("performer", dim=16, heads=2, nb_features=12, seed=6)
    assert torch.equal(a.omega, b.omega) and not torch.equal(a.omega, c.omega)

    m = create_mixer("performer", dim=16, heads=2, nb_features=12, redraw=True, redraw_interval=2)
    first = m.omega.clone()
    m.eval()
    for _ in range(5):
        m(x)
    assert torch.equal(m.omega, first), "eval never redraws"
    m.train()
    m(x)
    m(x)
    assert torch.equal(m.omega, first)
    m(x)  # third training call: interval of 2 reached
    assert not torch.equal(m.omega, first)

    fixed = create_mixer("performer", dim=16, heads=2, nb_features=12).train()
    before = fixed.omega.clone()
    for _ in range(4):
        fixed(x)
    assert torch.equal(fixed.omega, before)


def test_config_errors_name_the_field():
    with pytest.raises(ZooValueError, match="nb_features"):
        create_mixer("performer", nb_features=0)
    with pytest.raises(ZooValueError, match="ortho_scaling"):
        create_mixer("performer", ortho_scaling=2)
    with pytest.raises(ZooValueError, match="chunk_size"):
        create_mixer("performer", chunk_size=0)

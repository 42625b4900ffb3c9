"""Nyströmformer against the per-sequence oracle, its exact limit, and its building blocks."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooValueError, create_mixer
from zoo.functional import merge_heads, split_heads
from zoo.mixers.nystrom import iterative_pinv, landmark_weights, nystrom_attention, nystrom_kernels
from zoo.reference.dense import allowed_from_mask, dense_attention
from zoo.reference.kernels import iterative_pinv_oracle, nystrom_oracle

F64 = torch.float64


def _mixer(**kw):
    cfg = dict(dim=16, heads=2, num_landmarks=4, conv_kernel=5)
    cfg.update(kw)
    return create_mixer("nystrom", dtype=F64, **cfg).eval()


def _oracle_output(m, x, mask):
    H = m.config.heads
    q, k, v = (split_heads(p(x), H) for p in (m.q_proj, m.k_proj, m.v_proj))
    w = None if m.conv_weight is None else m.conv_weight
    o = nystrom_oracle(q, k, v, m.config.num_landmarks, mask, m.config.pinv_iterations, w)
    y = m.out_proj(merge_heads(o))
    return y if mask is None else y * mask[..., None]


@pytest.mark.parametrize("T", [3, 21])
def test_mixer_matches_oracle_outputs_and_gradients(T):
    m = _mixer()
    x = torch.randn(4, T, 16, dtype=F64, requires_grad=True)
    mask = torch.ones(4, T, dtype=torch.bool)
    mask[1, T // 2 :] = False  # right padding
    mask[2, :] = False  # fully padded
    mask[3, ::3] = False  # holes
    for mk in (None, mask):
        y = m(x, mk)
        ref = _oracle_output(m, x, mk)
        torch.testing.assert_close(y, ref, **tol(F64))
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, *m.parameters()])
    grads_ref = torch.autograd.grad((ref * g).sum(), [x, *m.parameters()])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **tol(F64))


def test_landmarks_equal_tokens_gives_exact_softmax():
    # M >= T: the module takes the exact limit (as the reference does for M = n).
    m = _mixer(num_landmarks=12, conv_kernel=0)
    x = torch.randn(2, 12, 16, dtype=F64)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    q, k, v = (split_heads(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    exact = dense_attention(q, k, v, allowed_from_mask(mask, 12))
    torch.testing.assert_close(m(x, mask), m.out_proj(merge_heads(exact)) * mask[..., None], **tol(F64))


def test_nystrom_formula_reaches_exact_softmax_when_each_token_is_a_landmark():
    # The identity behind the limit: with one landmark per token F = A = Bk = P and
    # F pinv(A) Bk V = P V. Checked on the general path with a converged iteration.
    B, H, T, P = 1, 2, 10, 8
    q, k, v = (0.5 * torch.randn(B, H, T, P, dtype=F64) for _ in range(3))
    q, k = q * P**-0.25, k * P**-0.25
    keys = torch.ones(1, T, dtype=torch.bool)
    f, a, bk, _ = nystrom_kernels(q, k, keys, T)
    probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, H, T, T)
    for t in (f, a, bk):
        torch.testing.assert_close(t, probs, **tol(F64))
    out = f @ iterative_pinv(a, 40) @ bk @ v
    torch.testing.assert_close(out, probs @ v, atol=1e-8, rtol=1e-6)


def test_short_sequences_get_the_exact_limit_and_keep_padding_invariance():
    # N <= M < T: each real token is its own landmark; equals the unpadded run (which has T <= M).
    m = _mixer(num_landmarks=6)
    x = torch.randn(1, 15, 16, dtype=F64)
    mask = torch.zeros(1, 15, dtype=torch.bool)
    mask[0, :5] = True
    torch.testing.assert_close(m(x, mask)[:, :5], m(x[:, :5]), **tol(F64))
    m0 = _mixer(num_landmarks=6, conv_kernel=0)
    q, k, v = (split_heads(p(x), 2) for p in (m0.q_proj, m0.k_proj, m0.v_proj))
    exact = m0.out_proj(merge_heads(dense_attention(q, k, v, allowed_from_mask(mask, 15)))) * mask[..., None]
    torch.testing.assert_close(m0(x, mask), exact, **tol(F64))


def test_pinv_iteration_converges_for_well_conditioned_a():
    M = 8
    a = torch.softmax(3 * torch.eye(M, dtype=F64) + 0.5 * torch.randn(2, 3, M, M, dtype=F64), dim=-1)
    eye = torch.eye(M, dtype=F64)
    residuals = [(a @ iterative_pinv(a, n) - eye).abs().max().item() for n in range(1, 7)]
    assert all(r1 < r0 for r0, r1 in zip(residuals[:3], residuals[1:4])), residuals
    assert residuals[-1] < 1e-10, residuals
    torch.testing.assert_close(iterative_pinv(a, 6), torch.linalg.inv(a), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(iterative_pinv(a[0, 1], 6), iterative_pinv_oracle(a[0, 1], 6), **tol(F64))


def test_pinv_normaliser_is_per_batch_element():
    M = 6
    a = torch.softmax(torch.randn(2, 2, M, M, dtype=F64), dim=-1)
    z = iterative_pinv(a, 6)
    a2 = a.clone()
    a2[1] = torch.softmax(5 * torch.randn(2, M, M, dtype=F64), dim=-1)  # very different column sums
    torch.testing.assert_close(iterative_pinv(a2, 6)[0], z[0], rtol=0, atol=0)


def test_padded_keys_do_not_affect_bk():
    B, H, T, P = 2, 2, 14, 8
    q, k = (torch.randn(B, H, T, P, dtype=F64) for _ in range(2))
    keys = torch.ones(B, T, dtype=torch.bool)
    keys[0, 9:] = False
    _, _, bk, _ = nystrom_kernels(q, k, keys, 4)
    assert torch.equal(bk[0, :, :, 9:], torch.zeros_like(bk[0, :, :, 9:]))
    k_junk = k.clone()
    k_junk[0, :, 9:] = 1e3 * torch.randn(H, T - 9, P, dtype=F64)
    q_junk = q.clone()
    q_junk[0, :, 9:] = 1e3 * torch.randn(H, T - 9, P, dtype=F64)
    f2, a2, bk2, _ = nystrom_kernels(q_junk, k_junk, keys, 4)
    torch.testing.assert_close(bk2, bk, **tol(F64))
    torch.testing.assert_close(a2, nystrom_kernels(q, k, keys, 4)[1], **tol(F64))


def test_landmark_runs_cover_real_tokens_evenly():
    keys = torch.tensor([[True] * 10 + [False] * 3, [False, True] * 6 + [True]])
    w, empty = landmark_weights(keys, 4, F64)  # (B, T, M)
    assert not empty.any()
    counts = (w > 0).sum(dim=1)  # (B, M) real tokens per run
    assert counts[0].tolist() == [3, 2, 3, 2] and counts[1].tolist() == [2, 2, 2, 1]
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2, 4, dtype=F64))
    assert torch.equal(w[~keys], torch.zeros_like(w[~keys]))


def test_mask_none_fast_path_equals_general_path():
    q, k, v = (torch.randn(2, 2, 24, 8, dtype=F64) for _ in range(3))
    all_real = torch.ones(2, 24, dtype=torch.bool)
    torch.testing.assert_close(nystrom_attention(q, k, v, 4), nystrom_attention(q, k, v, 4, all_real), **tol(F64))


def test_conv_skip_switch_and_config_errors():
    assert _mixer(conv_kernel=0).conv_weight is None
    assert _mixer(conv_kernel=7).conv_weight.shape == (2, 7)
    with pytest.raises(ZooValueError, match="conv_kernel"):
        create_mixer("nystrom", conv_kernel=4)
    with pytest.raises(ZooValueError, match="num_landmarks"):
        create_mixer("nystrom", num_landmarks=0)

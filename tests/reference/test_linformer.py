"""Linformer against the explicit-sum oracle and its exact limit (k = n, E = I)."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooValueError, create_mixer
from zoo.functional import merge_heads, split_heads
from zoo.reference.dense import allowed_from_mask, dense_attention
from zoo.reference.kernels import linformer_oracle

F64 = torch.float64


def _mixer(**kw):
    cfg = dict(dim=16, heads=2, proj_len=4, max_len=24)
    cfg.update(kw)
    return create_mixer("linformer", dtype=F64, **cfg).eval()


def _qkv(m, x):
    return tuple(split_heads(p(x), m.config.heads) for p in (m.q_proj, m.k_proj, m.v_proj))


@pytest.mark.parametrize("share_kv", [True, False])
def test_mixer_matches_oracle_outputs_and_gradients(share_kv):
    m = _mixer(share_kv=share_kv)
    x = torch.randn(2, 11, 16, dtype=F64, requires_grad=True)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 6:] = False
    y = m(x, mask)
    q, k, v = _qkv(m, x)
    proj_v = m.proj_k if m.proj_v is None else m.proj_v
    ref = m.out_proj(merge_heads(linformer_oracle(q, k, v, m.proj_k, proj_v, mask))) * mask[..., None]
    torch.testing.assert_close(y, ref, **tol(F64))
    g = torch.randn_like(y)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad((y * g).sum(), params), torch.autograd.grad((ref * g).sum(), params)):
        torch.testing.assert_close(a, b, **tol(F64))


def test_identity_projection_with_k_equal_n_is_exact_softmax():
    T = 9
    m = _mixer(proj_len=T, max_len=T)
    with torch.no_grad():
        m.proj_k.copy_(torch.eye(T, dtype=F64).expand(2, T, T))
    x = torch.randn(2, T, 16, dtype=F64)
    q, k, v = _qkv(m, x)
    exact = dense_attention(q, k, v, allowed_from_mask(None, T))
    torch.testing.assert_close(m(x), m.out_proj(merge_heads(exact)), **tol(F64))


def test_padded_values_do_not_matter_and_appended_padding_changes_nothing():
    m = _mixer()
    x = torch.randn(1, 15, 16, dtype=F64)
    mask = torch.zeros(1, 15, dtype=torch.bool)
    mask[0, :10] = True
    y = m(x, mask)
    x_junk = x.clone()
    x_junk[:, 10:] = 1e3 * torch.randn(1, 5, 16, dtype=F64)
    torch.testing.assert_close(m(x_junk, mask), y, **tol(F64))
    torch.testing.assert_close(y[:, :10], m(x[:, :10]), **tol(F64))
    # Padding placed before the real tokens shifts them onto other columns of E.
    shifted = torch.cat([x_junk[:, 10:], x[:, :10]], dim=1)
    front = torch.zeros(1, 15, dtype=torch.bool)
    front[0, 5:] = True
    assert (m(shifted, front)[:, 5:] - y[:, :10]).abs().max() > 1e-6


def test_too_long_input_names_t_and_max_len():
    m = _mixer(max_len=8)
    m(torch.randn(1, 8, 16, dtype=F64))
    with pytest.raises(ZooValueError, match=r"T <= max_len=8.*got T=9"):
        m(torch.randn(1, 9, 16, dtype=F64))


def test_projection_shape_init_and_config_errors():
    m = create_mixer("linformer", dim=16, heads=2, proj_len=32, max_len=4096)
    assert m.proj_k.shape == (2, 32, 4096) and m.proj_v is None
    assert abs(m.proj_k.std().item() - 0.02) < 2e-3
    with pytest.raises(ZooValueError, match="proj_len"):
        create_mixer("linformer", proj_len=64, max_len=32)
    with pytest.raises(ZooValueError, match="max_len"):
        create_mixer("linformer", max_len=0)

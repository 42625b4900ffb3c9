"""Gated DeltaNet: the chunked gated delta rule and the layer against token-by-token oracles (fp64)."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.mixers.gated_deltanet import gated_delta_rule_chunked, mamba_decay_init
from zoo.reference.gated_deltanet import gated_delta_rule_recurrent, gated_deltanet_reference

F64 = tol(torch.float64)


def build(**overrides):
    defaults = {"dim": 16, "heads": 2, "chunk_size": 4}
    defaults.update(overrides)
    torch.manual_seed(0)
    return create_mixer("gated_deltanet", dtype=torch.float64, **defaults).eval()


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


@pytest.mark.parametrize("T,chunk", [(13, 4), (32, 8), (5, 64)])
def test_chunked_op_equals_recurrence_with_strong_decay(T, chunk):
    torch.manual_seed(2)
    B, H, K, V = 2, 2, 6, 3
    q, v = torch.randn(B, H, T, K, dtype=torch.float64), torch.randn(B, H, T, V, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, K, dtype=torch.float64), dim=-1)
    beta = torch.rand(B, H, T, dtype=torch.float64)
    g = -8 * torch.rand(B, H, T, dtype=torch.float64)  # decays down to e^-8 per token: no overflow
    leaves = [t.requires_grad_() for t in (q, k, v, g, beta)]
    fast = gated_delta_rule_chunked(*leaves, chunk_size=chunk)
    slow = gated_delta_rule_recurrent(*leaves)
    torch.testing.assert_close(fast, slow, **F64)
    w = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad((fast * w).sum(), leaves), torch.autograd.grad((slow * w).sum(), leaves)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [10, 12])
def test_layer_equals_oracle_values_and_gradients(causal, T):
    m = build()
    x = torch.randn(2, T, 16, dtype=torch.float64)
    mask = ragged_mask(2, T, [T, 6])
    torch.testing.assert_close(m(x, mask, causal=causal), gated_deltanet_reference(m, x, mask, causal), **F64)
    grads = []
    weights = torch.linspace(-1, 1, 16, dtype=torch.float64)
    for fn in (m, lambda *a, **k: gated_deltanet_reference(m, *a, **k)):
        m.zero_grad()
        (fn(x, mask, causal=causal) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert {"A_log", "dt_bias", "a_proj.weight", "g_proj.weight"} <= set(grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_padded_token_inside_sequence_neither_writes_nor_decays(causal):
    m = build()
    x = torch.randn(1, 13, 16, dtype=torch.float64)
    mask = torch.ones(1, 13, dtype=torch.bool)
    mask[0, 5] = False
    x_junk = x.clone()
    x_junk[0, 5] = 100 * torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(m(x, mask, causal=causal), m(x_junk, mask, causal=causal), **F64)
    # and matches the oracle, where the padded token has log decay 0 and beta 0
    torch.testing.assert_close(m(x, mask, causal=causal), gated_deltanet_reference(m, x, mask, causal), **F64)


def test_decay_init_is_mamba_style():
    torch.manual_seed(0)
    A_log, dt_bias = mamba_decay_init(64, dtype=torch.float64)
    assert (A_log.exp() >= 1).all() and (A_log.exp() <= 16).all()
    dt = torch.nn.functional.softplus(dt_bias)
    assert (dt >= 1e-3 - 1e-9).all() and (dt <= 0.1 + 1e-9).all()


def test_bad_config_errors():
    with pytest.raises(ZooError, match="chunk_size"):
        create_mixer("gated_deltanet", chunk_size=0)
    with pytest.raises(ZooError, match="conv_size"):
        create_mixer("gated_deltanet", conv_size=0)

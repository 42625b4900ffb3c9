"""DeltaNet: the WY-chunked delta rule and the layer against token-by-token oracles (fp64)."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.mixers.deltanet import delta_rule_chunked
from zoo.reference.deltanet import delta_layer_reference, delta_rule_recurrent

F64 = tol(torch.float64)


def build(name: str = "deltanet", **overrides):
    defaults = {"dim": 16, "heads": 2, "chunk_size": 4}
    defaults.update(overrides)
    torch.manual_seed(0)
    return create_mixer(name, dtype=torch.float64, **defaults).eval()


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


def op_inputs(T: int, gated: bool, B: int = 2, H: int = 3, K: int = 5, V: int = 4):
    torch.manual_seed(1)
    q = torch.randn(B, H, T, K, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, K, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, V, dtype=torch.float64)
    beta = torch.rand(B, H, T, dtype=torch.float64)
    g = -torch.rand(B, H, T, dtype=torch.float64) if gated else None
    return [t.requires_grad_() for t in (q, k, v, beta)] + [g if g is None else g.requires_grad_()]


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (16, 8), (21, 64), (9, 1)])
def test_chunked_op_equals_recurrence_values_and_gradients(gated, T, chunk):
    inputs = op_inputs(T, gated)
    fast = delta_rule_chunked(*inputs[:4], inputs[4], chunk_size=chunk)
    slow = delta_rule_recurrent(*inputs[:4], inputs[4])
    torch.testing.assert_close(fast, slow, **F64)
    weights = torch.randn_like(fast)
    leaves = [t for t in inputs if t is not None]
    g_fast = torch.autograd.grad((fast * weights).sum(), leaves)
    g_slow = torch.autograd.grad((slow * weights).sum(), leaves)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, **F64)


def test_op_scale_and_zero_beta_pass_state_through():
    q, k, v, beta, _ = op_inputs(12, gated=False)
    base = delta_rule_chunked(q, k, v, beta, chunk_size=4)
    torch.testing.assert_close(delta_rule_chunked(q, k, v, beta, chunk_size=4, scale=1.0), base * 5**0.5, **F64)
    # beta = 0 at token 5: its key/value must not matter (it writes nothing)
    beta0 = beta.detach().clone()
    beta0[:, :, 5] = 0
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 5], v2[:, :, 5] = 3.0, -7.0
    a = delta_rule_chunked(q, k, v, beta0, chunk_size=4)
    b = delta_rule_chunked(q, k2, v2, beta0, chunk_size=4)
    torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [11, 16])
def test_layer_equals_oracle_values_and_gradients(causal, T):
    m = build()
    x = torch.randn(2, T, 16, dtype=torch.float64)
    mask = ragged_mask(2, T, [T, 7])
    torch.testing.assert_close(m(x, mask, causal=causal), delta_layer_reference(m, x, mask, causal), **F64)
    torch.testing.assert_close(m(x, causal=causal), delta_layer_reference(m, x, None, causal), **F64)
    grads = []
    weights = torch.linspace(-1, 1, 16, dtype=torch.float64)
    for fn in (m, lambda *a, **k: delta_layer_reference(m, *a, **k)):
        m.zero_grad()
        (fn(x, mask, causal=causal) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_padded_token_inside_sequence_neither_writes_nor_feeds(causal):
    m = build()
    x = torch.randn(1, 14, 16, dtype=torch.float64)
    mask = torch.ones(1, 14, dtype=torch.bool)
    mask[0, 6] = False
    x_junk = x.clone()
    x_junk[0, 6] = 100 * torch.randn(16, dtype=torch.float64)
    y, y_junk = m(x, mask, causal=causal), m(x_junk, mask, causal=causal)
    torch.testing.assert_close(y, y_junk, **F64)
    assert torch.equal(y[0, 6], torch.zeros(16, dtype=torch.float64))


def test_bidirectional_sees_the_future_causal_does_not():
    m = build()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 9:] += 1.0
    assert (m(x2)[0, :9] - m(x)[0, :9]).abs().max() > 1e-6
    torch.testing.assert_close(m(x2, causal=True)[0, :9], m(x, causal=True)[0, :9], **F64)


def test_bad_config_errors():
    with pytest.raises(ZooError, match="chunk_size"):
        create_mixer("deltanet", chunk_size=0)
    with pytest.raises(ZooError, match="conv_size"):
        create_mixer("deltanet", conv_size=-1)
    with pytest.raises(ZooError, match="norm_eps"):
        create_mixer("deltanet", norm_eps=-1.0)

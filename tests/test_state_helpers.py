"""The state helpers against step-by-step recurrences (the oracles), in fp64."""

from __future__ import annotations

import pytest
import torch

from zoo.state import conv_with_tail, decayed_attention_step, delta_rule_step

F64 = dict(atol=1e-10, rtol=1e-8)


def _naive_decay(q, k, v, log_g, S):
    outs = []
    for t in range(v.shape[2]):
        g = log_g[:, :, t].exp()
        g = g[..., None, None] if g.dim() == 2 else g[..., :, None]  # (B, H, 1 or K, 1)
        S = S * g + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, K, V)
        outs.append(torch.matmul(q[:, :, t, None], S))  # (B, H, 1, V)
    return torch.cat(outs, dim=2), S


def _naive_delta(q, k, v, beta, g, S):
    outs = []
    for t in range(v.shape[2]):
        if g is not None:
            S = S * g[:, :, t].exp()[..., None, None]
        kt, vt, bt = k[:, :, t, None], v[:, :, t, None], beta[:, :, t, None, None]  # (B, H, 1, .)
        S = S + kt.transpose(-1, -2) @ (bt * (vt - kt @ S))
        outs.append(q[:, :, t, None] @ S)
    return torch.cat(outs, dim=2), S


@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("heads_qk", [1, 3])
def test_decayed_attention_step_equals_the_recurrence(channel, heads_qk):
    B, H, n, K, V = 2, 3, 23, 4, 5
    q, k = torch.randn(B, heads_qk, n, K, dtype=torch.float64), torch.randn(B, heads_qk, n, K, dtype=torch.float64)
    v = torch.randn(B, H, n, V, dtype=torch.float64)
    log_g = -torch.rand(B, H, n, *((K,) if channel else ()), dtype=torch.float64)
    S0 = torch.randn(B, H, K, V, dtype=torch.float64)
    o, S = decayed_attention_step(q, k, v, log_g, S0, piece=6)
    o_ref, S_ref = _naive_decay(q.expand(B, H, n, K), k.expand(B, H, n, K), v, log_g, S0)
    torch.testing.assert_close(o, o_ref, **F64)
    torch.testing.assert_close(S, S_ref, **F64)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_step_equals_the_recurrence(gated):
    B, H, n, K = 2, 2, 19, 4
    q, k, v = (torch.randn(B, H, n, K, dtype=torch.float64) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    beta = torch.rand(B, H, n, dtype=torch.float64)
    g = -torch.rand(B, H, n, dtype=torch.float64) if gated else None
    S0 = torch.randn(B, H, K, K, dtype=torch.float64)
    o, S = delta_rule_step(q, k, v, beta, g, S0, chunk=5)
    o_ref, S_ref = _naive_delta(q, k, v, beta, g, S0)
    torch.testing.assert_close(o, o_ref, **F64)
    torch.testing.assert_close(S, S_ref, **F64)


def test_conv_with_tail_continues_the_sequence():
    conv = torch.nn.Conv1d(3, 3, 4, groups=3, padding=3, dtype=torch.float64)

    def causal(u):  # (B, L, C) -> (B, L, C)
        return conv(u.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2)

    u = torch.randn(2, 11, 3, dtype=torch.float64)
    tail = torch.zeros(2, 3, 3, dtype=torch.float64)
    outs = []
    for s in (0, 5, 6, 10):
        e = {0: 5, 5: 6, 6: 10, 10: 11}[s]
        y, tail = conv_with_tail(tail, u[:, s:e], causal)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), causal(u), **F64)
    assert tail.shape == (2, 3, 3)

"""The inference path of the scalar-decay scan (a chunk loop, no autograd) equals the batched
path autograd records, value for value: odd lengths, shared q/k heads (mamba2), fp64."""

import pytest
import torch

from zoo.functional import chunks_of
from zoo.scan import chunked_decay_attention


@pytest.mark.parametrize("T, chunk, shared", [(37, 8, False), (64, 16, True), (5, 8, False)])
def test_loop_equals_batched(T, chunk, shared):
    g = torch.Generator().manual_seed(T)
    B, H, K, V = 2, 3, 4, 5
    qk_heads = 1 if shared else H
    q = torch.randn(B, qk_heads, T, K, generator=g, dtype=torch.float64)
    k = torch.randn(B, qk_heads, T, K, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    log_g = -torch.rand(B, H, T, generator=g, dtype=torch.float64)
    with torch.no_grad():
        loop = chunked_decay_attention(q, k, v, log_g, chunk=chunk)
    batched = chunked_decay_attention(q.requires_grad_(), k, v, log_g, chunk=chunk)
    assert batched.grad_fn is not None and loop.grad_fn is None
    torch.testing.assert_close(loop, batched.detach(), rtol=1e-12, atol=1e-12)


def test_masked_exp_matches_exp_of_minus_inf_with_gradients():
    g = torch.Generator().manual_seed(0)
    G = (-torch.rand(2, 3, 6, generator=g, dtype=torch.float64)).cumsum(-1).requires_grad_()
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    from zoo.scan import masked_exp

    ours = masked_exp(G[..., :, None] - G[..., None, :], future)
    plain = (G[..., :, None] - G[..., None, :]).masked_fill(future, float("-inf")).exp()
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)
    w = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), G)
    (g_plain,) = torch.autograd.grad((plain * w).sum(), G)
    torch.testing.assert_close(g_ours, g_plain, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(masked_exp(G[..., :, None] - G[..., None, :], future), plain.detach())


@pytest.mark.parametrize("T", [64, 70])
def test_loop_fixed_decay_equals_batched(T):
    """RetNet's decay is fixed along time (an expanded view): the loop computes it once."""
    g = torch.Generator().manual_seed(1)
    B, H, K, V, chunk = 1, 2, 4, 3, 16
    q, k = (torch.randn(B, H, T, K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    log_g = torch.tensor([-0.1, -0.7], dtype=torch.float64)[None, :, None].expand(B, H, T)
    with torch.no_grad():
        loop = chunked_decay_attention(q, k, v, log_g, chunk=chunk)
    batched = chunked_decay_attention(q.requires_grad_(), k, v, log_g, chunk=chunk).detach()
    torch.testing.assert_close(loop, batched, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_inference_path_equals_the_autograd_path(gated):
    """deltanet / gated_deltanet: the preallocated state pass (no autograd) gives the list form's values."""
    from zoo.mixers.deltanet import delta_rule_chunked

    g = torch.Generator().manual_seed(2)
    B, H, T, K, V = 1, 2, 37, 4, 3
    q, k = (torch.nn.functional.normalize(torch.randn(B, H, T, K, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    log_g = -torch.rand(B, H, T, generator=g, dtype=torch.float64) if gated else None
    with torch.no_grad():
        fast = delta_rule_chunked(q, k, v, beta, log_g, chunk_size=8)
    graph = delta_rule_chunked(q, k, v.requires_grad_(), beta, log_g, chunk_size=8)
    assert graph.grad_fn is not None
    torch.testing.assert_close(fast, graph.detach(), rtol=1e-12, atol=1e-12)


def test_chunks_of_is_the_ceiling_and_the_fill():
    for chunk in (1, 3, 8, 64):
        for T in range(1, 3 * chunk + 2):
            N, pad = chunks_of(T, chunk)
            assert N == -(-T // chunk) and pad == N * chunk - T and 0 <= pad < chunk, (T, chunk)

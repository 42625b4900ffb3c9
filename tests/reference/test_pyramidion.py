"""Pyramidion: successive-halving top-k vs a per-sequence loop oracle, and its block attention
vs a dense block-diagonal oracle (MIXERS.md 5.7)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.functional import successive_halving_topk
from zoo.reference.pyramidion import block_attention_dense, halving_topk_loop, pyramidion_reference

F64 = tol(torch.float64)


def make(name: str, **overrides):
    torch.manual_seed(0)
    fields = dict(dim=16, heads=2, block_size=8)
    fields.update(overrides)
    return create_mixer(name, dtype=torch.float64, **fields)


def padded_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


# ---------------------------------------------------------------- the top-k operator alone


@pytest.mark.parametrize("L,k", [(16, 4), (13, 4), (37, 10), (9, 1), (5, 7)])
@pytest.mark.parametrize("flip,sort_back", [(True, False), (False, False), (True, True)])
def test_topk_matches_loop_oracle_values_and_gradients(L, k, flip, sort_back):
    B, D = 3, 5
    x = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(B, L, dtype=torch.float64) + 1e-5).requires_grad_()
    mask = padded_mask(B, L, [L, max(1, L // 2), 0])
    out, out_s, out_m = successive_halving_topk(x, s, k, mask, flip=flip, sort_back=sort_back)
    ref, ref_s, ref_m = halving_topk_loop(x, s, k, mask, flip=flip, sort_back=sort_back)
    assert out.shape == (B, k, D) and out_m.shape == (B, k)
    assert torch.equal(out_m, ref_m)
    torch.testing.assert_close(out, ref, **F64)
    torch.testing.assert_close(out_s, ref_s, **F64)
    g = torch.randn_like(out)
    gx, gs = torch.autograd.grad((out * g).sum() + out_s.sum(), (x, s))
    rx, rs = torch.autograd.grad((ref * g).sum() + ref_s.sum(), (x, s))
    torch.testing.assert_close(gx, rx, **F64)
    torch.testing.assert_close(gs, rs, **F64)


def test_keep_everything_when_k_is_length():
    x = torch.randn(2, 11, 4)
    s = torch.rand(2, 11)
    out, out_s, out_m = successive_halving_topk(x, s, 11)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    torch.testing.assert_close(out_s, s, rtol=0, atol=0)
    assert out_m.all()


@pytest.mark.parametrize("sort_back", [False, True])
def test_hard_selects_exactly_the_highest_scores(sort_back):
    torch.manual_seed(1)
    B, L, D, k = 4, 29, 3, 6
    x = torch.randn(B, L, D)
    s = torch.rand(B, L)
    out, out_s, out_m = successive_halving_topk(x, s, k, hard=True, sort_back=sort_back)
    for b in range(B):
        idx = s[b].topk(k).indices  # distinct random scores: no ties
        if sort_back:
            idx = idx.sort().values
        torch.testing.assert_close(out[b], x[b, idx], rtol=0, atol=0)
        torch.testing.assert_close(out_s[b], s[b, idx], rtol=0, atol=0)
    assert out_m.all()


def test_large_base_is_the_hard_limit():
    # MIXERS.md 5.7.1: E = I, beta = 1e4, separated scores -> exactly the top-k rows (as a set)
    L, k = 16, 4
    E = torch.eye(L, dtype=torch.float64)[None]
    s = (torch.randperm(L, generator=torch.Generator().manual_seed(3)).double() / L + 0.01)[None]
    soft, soft_s, _ = successive_halving_topk(E, s, k, base=1e4)
    hard, hard_s, _ = successive_halving_topk(E, s, k, hard=True)
    torch.testing.assert_close(soft, hard, **F64)
    assert set(soft.argmax(-1)[0].tolist()) == set(s[0].topk(k).indices.tolist())
    # a small base really is soft: the same call with beta = 20 mixes tokens
    mild, _, _ = successive_halving_topk(E, s, k, base=20.0)
    assert (mild.max(-1).values < 1 - 1e-3).any()


def test_outputs_are_convex_combinations():
    B, L, D, k = 2, 24, 6, 3
    s = torch.rand(B, L, dtype=torch.float64)
    E = torch.eye(L, dtype=torch.float64).expand(B, L, L)  # output row = the mixing weights
    w, out_s, _ = successive_halving_topk(E, s, k)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, k, dtype=torch.float64), **F64)
    torch.testing.assert_close(out_s, torch.einsum("bkl,bl->bk", w, s), **F64)  # scores mix alike
    const = torch.randn(D, dtype=torch.float64).expand(B, L, D)
    out, _, _ = successive_halving_topk(const, s, k)
    torch.testing.assert_close(out, const[:, :k], **F64)
    assert (out_s >= s.min(-1, keepdim=True).values - 1e-12).all()
    assert (out_s <= s.max(-1, keepdim=True).values + 1e-12).all()


def test_padded_tokens_are_never_selected():
    B, L, k = 3, 20, 8
    lengths = [20, 5, 0]
    mask = padded_mask(B, L, lengths)
    E = torch.eye(L, dtype=torch.float64).expand(B, L, L)
    s = torch.rand(B, L, dtype=torch.float64)
    s[~mask] = 10.0  # even with the highest scores, padding must lose
    for hard, flip in itertools.product([False, True], [True, False]):
        w, out_s, out_m = successive_halving_topk(E, s, k, mask, hard=hard, flip=flip)
        for b, n in enumerate(lengths):
            assert int(out_m[b].sum()) == min(n, k)
            assert torch.equal(w[b][:, n:], torch.zeros_like(w[b][:, n:])), "mass on padded tokens"
            assert torch.equal(w[b][~out_m[b]], torch.zeros_like(w[b][~out_m[b]]))
            torch.testing.assert_close(w[b][out_m[b]].sum(-1), torch.ones(min(n, k), dtype=torch.float64), **F64)


def test_permutation_invariance_without_sort_back():
    B, L, D, k = 2, 32, 4, 4
    x = torch.randn(B, L, D, dtype=torch.float64)
    s = torch.rand(B, L, dtype=torch.float64)
    perm = torch.randperm(L)
    out, out_s, _ = successive_halving_topk(x, s, k)
    out_p, out_ps, _ = successive_halving_topk(x[:, perm], s[:, perm], k)
    torch.testing.assert_close(out_p, out, **F64)
    torch.testing.assert_close(out_ps, out_s, **F64)


def test_ties_are_broken_by_position_deterministically():
    x = torch.arange(8.0).reshape(1, 8, 1)
    s = torch.full((1, 8), 0.5)
    out, _, _ = successive_halving_topk(x, s, 4, hard=True)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]), rtol=0, atol=0)


def test_bad_k_raises():
    with pytest.raises(ValueError, match="k"):
        successive_halving_topk(torch.randn(1, 4, 2), torch.rand(1, 4), 0)


# ---------------------------------------------------------------- the mixers


@pytest.mark.parametrize("overrides", [{}, {"flip": False, "sort_back": True}, {"keep_ratio": 0.3, "hard": True}])
def test_pyramidion_matches_oracle(overrides):
    m = make("pyramidion", **overrides)
    x = torch.randn(3, 37, 16, dtype=torch.float64)
    mask = padded_mask(3, 37, [37, 19, 0])
    y, out_mask = m.forward_with_mask(x, mask)
    ref, ref_mask = pyramidion_reference(m, x, mask)
    assert y.shape == (3, m.out_len(37), 16)
    assert torch.equal(out_mask, ref_mask)
    torch.testing.assert_close(y, ref, **F64)
    assert [int(n) for n in out_mask.sum(-1)] == [m.out_len(37), min(19, m.out_len(37)), 0]


def test_pyramidion_gradients_match_oracle_and_reach_the_scorer():
    m = make("pyramidion", keep_ratio=0.25)
    x = torch.randn(2, 27, 16, dtype=torch.float64)
    mask = padded_mask(2, 27, [27, 20])
    g = torch.randn(2, m.out_len(27), 16, dtype=torch.float64)
    params = [p for _, p in m.named_parameters()]
    ours = torch.autograd.grad((m.forward_with_mask(x, mask)[0] * g).sum(), params)
    ref = torch.autograd.grad((pyramidion_reference(m, x, mask)[0] * g).sum(), params)
    for (name, _), a, b in zip(m.named_parameters(), ours, ref):
        torch.testing.assert_close(a, b, **F64, msg=lambda s: f"{name}: {s}")
    scorer_grad = dict(zip([n for n, _ in m.named_parameters()], ours))["scorer.weight"]
    assert scorer_grad.abs().sum() > 1e-6


def test_pyramidion_keep_ratio_one_keeps_every_token():
    m = make("pyramidion", keep_ratio=1.0)
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    mask = padded_mask(2, 21, [21, 9])
    y, out_mask = m.forward_with_mask(x, mask)
    assert torch.equal(out_mask, mask)
    torch.testing.assert_close(y, block_attention_dense(m, x, mask), **F64)


def test_pyramidion_hard_selects_the_top_scored_rows():
    m = make("pyramidion", hard=True, keep_ratio=0.2)
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    y, _ = m.forward_with_mask(x)
    a = block_attention_dense(m, x)  # (1, 30, 16)
    top = m.scorer(a).squeeze(-1)[0].topk(6).indices
    torch.testing.assert_close(y[0], a[0, top], **F64)


@pytest.mark.parametrize("T,expected", [(1, 1), (7, 2), (8, 2), (37, 10), (30, 8)])
def test_out_len(T, expected):
    assert make("pyramidion").out_len(T) == expected
    assert create_mixer("pyramidion", dim=16, heads=2, keep_ratio=0.1).out_len(30) == 3


@pytest.mark.parametrize(
    "bad", [{"keep_ratio": 0.0}, {"keep_ratio": 1.5}, {"base": 1.0}, {"block_size": 0}, {"flip": 1}]
)
def test_pyramidion_rejects_bad_config(bad):
    with pytest.raises(ZooError, match=next(iter(bad))):
        create_mixer("pyramidion", dim=16, heads=2, **bad)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [5, 8, 29])
def test_pyramidion_block_matches_block_diagonal_oracle(T, causal):
    m = make("pyramidion_block")
    x = torch.randn(2, T, 16, dtype=torch.float64)
    mask = padded_mask(2, T, [T, max(1, T - 4)])
    torch.testing.assert_close(m(x, mask, causal=causal), block_attention_dense(m, x, mask, causal), **F64)


def test_pyramidion_block_with_one_block_is_softmax():
    blk = make("pyramidion_block", block_size=64)
    torch.manual_seed(0)
    ref = create_mixer("softmax", dim=16, heads=2, dtype=torch.float64)
    ref.load_state_dict(blk.state_dict())
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    mask = padded_mask(2, 40, [40, 33])
    for causal in (False, True):
        torch.testing.assert_close(blk(x, mask, causal=causal), ref(x, mask, causal=causal), **F64)


def test_pyramidion_block_blocks_do_not_interact():
    m = make("pyramidion_block")
    x = torch.randn(1, 24, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    (grad,) = torch.autograd.grad(y[0, 8:16].sum(), x)  # outputs of block 1
    assert grad[0, 8:16].abs().sum() > 0
    assert torch.equal(grad[0, :8], torch.zeros_like(grad[0, :8]))
    assert torch.equal(grad[0, 16:], torch.zeros_like(grad[0, 16:]))

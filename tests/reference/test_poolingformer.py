"""Poolingformer vs a dense oracle of its two levels (explicit masks, pooled keys built slot by
slot), and the properties of MIXERS.md 4.5."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer, list_mixers
from zoo.functional import grid_pool, pooled_window_attention
from zoo.reference.dense import dense_attention
from zoo.reference.poolingformer import grid_slots, poolingformer_reference

F64 = tol(torch.float64)
D, H = 16, 2


def make(**overrides):
    torch.manual_seed(0)
    fields = dict(dim=D, heads=H, local_window=4, pool_window=12, pool_kernel=3, pool_stride=2, pool="mean")
    fields.update(overrides)
    return create_mixer("poolingformer", dtype=torch.float64, **fields)


def padded_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


GEOMETRIES = [  # (local_window, pool_window, pool_kernel, pool_stride)
    (4, 12, 3, 2),  # overlapping odd kernel
    (6, 16, 4, 4),  # non-overlapping, the default shape
    (2, 9, 2, 3),  # kernel < stride (gaps), odd window
    (8, 20, 5, 2),  # off = 1
    (0, 10, 1, 3),  # level 1 = the token itself
]


@pytest.mark.parametrize("pool", ["mean", "max", "conv", "ldconv"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_dense_oracle(pool, geometry):
    w1, w2, kappa, xi = geometry
    m = make(local_window=w1, pool_window=w2, pool_kernel=kappa, pool_stride=xi, pool=pool)
    x = torch.randn(3, 29, D, dtype=torch.float64)
    mask = padded_mask(3, 29, [29, 17, 0])
    torch.testing.assert_close(m(x, mask), poolingformer_reference(m, x, mask), **F64)


@pytest.mark.parametrize("pool", ["mean", "max", "conv", "ldconv"])
def test_gradients_match_dense_oracle(pool):
    m = make(pool=pool, pool_kernel=4, pool_stride=2)
    x = torch.randn(2, 21, D, dtype=torch.float64, requires_grad=True)
    mask = padded_mask(2, 21, [21, 15])
    g = torch.randn(2, 21, D, dtype=torch.float64)
    names, params = zip(*m.named_parameters())
    ours = torch.autograd.grad((m(x, mask) * g).sum(), (x, *params))
    ref = torch.autograd.grad((poolingformer_reference(m, x, mask) * g).sum(), (x, *params))
    for name, a, b in zip(("x", *names), ours, ref):
        torch.testing.assert_close(a, b, **F64, msg=lambda s: f"{name}: {s}")
        if name.endswith("pool_weight") or "pool_proj" in name:
            assert a.abs().sum() > 0, f"no gradient reached {name}"


def test_level_two_off_is_local_attention():
    m = make(local_window=6, pool_window=0)
    x = torch.randn(2, 25, D, dtype=torch.float64)
    mask = padded_mask(2, 25, [25, 18])
    split = lambda t: t.reshape(2, 25, H, D // H).transpose(1, 2)  # noqa: E731
    pos = torch.arange(25)
    band = ((pos[:, None] - pos[None, :]).abs() <= 3)[None, None] & mask[:, None, None, :]
    o = dense_attention(split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x)), band)
    expected = m.out_proj(o.transpose(1, 2).reshape(2, 25, D)) * mask[..., None]
    torch.testing.assert_close(m(x, mask), expected, **F64)


@pytest.mark.skipif("longformer" not in list_mixers(), reason="longformer not registered")
def test_level_two_off_equals_the_longformer_mixer():
    m = make(local_window=8, pool_window=0)
    torch.manual_seed(0)
    lf = create_mixer("longformer", dim=D, heads=H, window=4, dtype=torch.float64)
    own = {
        f"{n}.{p}": getattr(m, n).state_dict()[p]
        for n in ("q_proj", "k_proj", "v_proj", "out_proj")
        for p in ("weight", "bias")
    }
    lf.load_state_dict({**lf.state_dict(), **own})
    x = torch.randn(2, 30, D, dtype=torch.float64)
    mask = padded_mask(2, 30, [30, 21])
    torch.testing.assert_close(m(x, mask), lf(x, mask), **F64)


def test_unit_pooling_with_a_wide_window_is_full_attention_over_u():
    m = make(pool_kernel=1, pool_stride=1, pool_window=60, pool="mean")
    T = 27
    x = torch.randn(2, T, D, dtype=torch.float64)
    mask = padded_mask(2, T, [T, 20])
    split = lambda t: t.reshape(2, T, H, D // H).transpose(1, 2)  # noqa: E731
    merge = lambda t: t.transpose(1, 2).reshape(2, T, D)  # noqa: E731
    pos = torch.arange(T)
    band = ((pos[:, None] - pos[None, :]).abs() <= 2)[None, None] & mask[:, None, None, :]
    y = merge(dense_attention(split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x)), band))
    u = x + y
    full = mask[:, None, None, :].expand(2, 1, T, T)
    z = merge(dense_attention(split(m.q2_proj(u)), split(m.k2_proj(u)), split(m.v2_proj(u)), full))
    torch.testing.assert_close(m(x, mask), m.out_proj(y + z) * mask[..., None], **F64)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_receptive_field(geometry):
    w1, w2, kappa, xi = geometry
    m = make(local_window=w1, pool_window=w2, pool_kernel=kappa, pool_stride=xi, pool="ldconv")
    T, i = 64, 30
    x = torch.randn(1, T, D, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(m(x)[0, i].sum(), x)
    reach = grad[0].abs().sum(-1) > 0  # (T,)
    dist = (torch.arange(T) - i).abs()
    bound = w1 // 2 + w2 / 2 + (kappa - 1) / 2  # window edge + half a slot + level-1 reach
    assert bound <= w1 // 2 + w2 // 2 + kappa  # MIXERS.md 4.5.3
    assert not reach[dist > bound].any(), "output depends on tokens beyond the receptive field"
    assert reach[dist <= w1 // 2].all()
    assert reach[dist >= bound - kappa].any(), "level 2 reaches no further than level 1"


def test_mean_pool_is_the_average_of_real_keys_and_empty_slots_are_ignored():
    T, kappa, xi = 13, 4, 3
    t = torch.randn(2, T, 5, dtype=torch.float64)
    mask = padded_mask(2, T, [T, 8])
    mask[0, 3:7] = False  # slot 1 of sequence 0 ([2, 6)) keeps position 2 only; a hole inside
    pooled, real = grid_pool(t, mask, kappa, xi, "mean")
    for b in range(2):
        for s, taps in enumerate(grid_slots(T, kappa, xi)):
            present = [j for j in taps if 0 <= j < T and mask[b, j]]
            assert bool(real[b, s]) == bool(present)
            expected = t[b, present].mean(0) if present else torch.zeros(5, dtype=torch.float64)
            torch.testing.assert_close(pooled[b, s], expected, **F64)
    # an all-pad slot must get zero attention weight: garbage in it changes nothing
    q = torch.randn(2, 1, T, 5, dtype=torch.float64)
    k, v = pooled[:, None], pooled[:, None] * 2
    out = pooled_window_attention(q, k, v, real, kernel=kappa, stride=xi, window=8)
    empty = ~real
    assert empty.any()
    k2, v2 = k.clone(), v.clone()
    k2[:, 0][empty], v2[:, 0][empty] = 1e3, -1e3
    torch.testing.assert_close(pooled_window_attention(q, k2, v2, real, kernel=kappa, stride=xi, window=8), out, **F64)


@pytest.mark.parametrize("block", [2, 4, 6, 40])
def test_blocked_level_two_is_independent_of_the_query_block(block):
    T, K = 23, 12
    q = torch.randn(2, 2, T, 4, dtype=torch.float64)
    k = torch.randn(2, 2, K, 4, dtype=torch.float64)
    v = torch.randn(2, 2, K, 4, dtype=torch.float64)
    real = torch.rand(2, K) > 0.3
    ref = pooled_window_attention(q, k, v, real, kernel=3, stride=2, window=7, block=2)
    out = pooled_window_attention(q, k, v, real, kernel=3, stride=2, window=7, block=block)
    torch.testing.assert_close(out, ref, **F64)
    twice_centre = 2 * (2 * torch.arange(K)) + 2  # off = 0, kernel - 1 = 2
    allowed = ((twice_centre[None, :] - 2 * torch.arange(T)[:, None]).abs() <= 7)[None, None] & real[:, None, None, :]
    torch.testing.assert_close(ref, dense_attention(q, k, v, allowed), **F64)


@pytest.mark.parametrize("geometry", [(4, 12, 3, 2), (8, 20, 5, 2), (6, 16, 4, 4)])
def test_padding_invariance_with_long_padding(geometry):
    w1, w2, kappa, xi = geometry
    m = make(local_window=w1, pool_window=w2, pool_kernel=kappa, pool_stride=xi, pool="ldconv")
    N = 16
    x = torch.randn(1, N + 21, D, dtype=torch.float64)
    mask = padded_mask(1, N + 21, [N])
    y = m(x, mask)
    torch.testing.assert_close(y[:, :N], m(x[:, :N]), **F64)
    assert torch.equal(y[:, N:], torch.zeros_like(y[:, N:]))


@pytest.mark.parametrize(
    "bad",
    [
        {"local_window": 5},
        {"local_window": -2},
        {"pool_window": -1},
        {"pool_kernel": 0},
        {"pool_stride": 0},
        {"pool": "avg"},
    ],
)
def test_rejects_bad_config(bad):
    with pytest.raises(ZooError, match=next(iter(bad))):
        create_mixer("poolingformer", dim=D, heads=H, **bad)


def test_parameters_per_pool():
    base = sum(p.numel() for p in make(pool="mean").parameters())
    assert base == 7 * D * D + 7 * D
    assert sum(p.numel() for p in make(pool="max").parameters()) == base
    assert sum(p.numel() for p in make(pool="conv").parameters()) == base + 2 * D * 3
    assert sum(p.numel() for p in make(pool="ldconv").parameters()) == base + 2 * (D * H * 3 + H * 3)

"""Longformer vs a dense oracle with an explicit band + global mask (MIXERS.md 3.8), and the
blocked sliding-window kernel of zoo.functional vs dense attention."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.functional import merge_softmax_parts, sliding_window_attention
from zoo.reference.dense import dense_attention
from zoo.reference.longformer import band_mask, longformer_reference

F64 = tol(torch.float64)


def make(**overrides):
    torch.manual_seed(0)
    fields = dict(dim=16, heads=2, window=3, num_global=0, block_size=4)
    fields.update(overrides)
    m = create_mixer("longformer", dtype=torch.float64, **fields)
    # distinct global projections, so a mix-up between local and global weights shows
    with torch.no_grad():
        for p in (m.q_global, m.k_global, m.v_global):
            p.weight.add_(0.3 * torch.randn_like(p.weight))
    return m


def padded_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


# ---------------------------------------------------------------- the blocked band kernel alone


@pytest.mark.parametrize("T", [1, 6, 23])
@pytest.mark.parametrize("window,dilation,block", [(0, 1, None), (2, 1, None), (3, 2, 2), (5, 3, 4), (40, 1, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_kernel_matches_dense(T, window, dilation, block, causal):
    B, H, P = 2, 2, 4
    q, k, v = (torch.randn(B, H, T, P, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(B, T) > 0.3
    allowed = band_mask(T, window, dilation, causal)[None, None] & mask[:, None, None, :]  # (B, 1, T, T)
    ref = dense_attention(q, k, v, allowed)
    out, lse = sliding_window_attention(q, k, v, window, mask, causal, dilation, block=block, return_lse=True)
    torch.testing.assert_close(out, ref, **F64)
    scores = (q @ k.transpose(-1, -2)) * P**-0.5  # (B, H, T, T)
    ref_lse = scores.masked_fill(~allowed, float("-inf")).logsumexp(-1)
    has = allowed.any(-1).expand_as(ref_lse)
    torch.testing.assert_close(lse[has], ref_lse[has], **F64)
    assert torch.isfinite(lse).all()
    # the fused (SDPA) path in fp32 agrees too
    out32 = sliding_window_attention(q.float(), k.float(), v.float(), window, mask, causal, dilation, block=block)
    torch.testing.assert_close(out32.double(), ref, **tol(torch.float32))


def test_merge_softmax_parts_is_the_joint_softmax():
    B, H, T, P = 1, 2, 9, 4
    q, k, v = (torch.randn(B, H, T, P, dtype=torch.float64) for _ in range(3))
    split = torch.rand(T) > 0.5
    split[0], split[1] = True, False
    parts = []
    for keys in (split, ~split):
        allowed = keys[None, None, None, :].expand(B, H, T, T)
        o = dense_attention(q, k, v, allowed)
        lse = ((q @ k.transpose(-1, -2)) * P**-0.5).masked_fill(~allowed, float("-inf")).logsumexp(-1)
        parts.append((o, lse))
    out, lse = merge_softmax_parts(parts)
    full = dense_attention(q, k, v, torch.ones(1, 1, T, T, dtype=torch.bool))
    torch.testing.assert_close(out, full, **F64)
    torch.testing.assert_close(lse, ((q @ k.transpose(-1, -2)) * P**-0.5).logsumexp(-1), **F64)


# ---------------------------------------------------------------- the mixer vs the dense oracle


CASES = [
    dict(),  # window only
    dict(num_global=2),
    dict(num_global=3, dilation=2),
    dict(dilation=3, window=2),
    dict(num_global=1, block_size=1),
    dict(window=8, num_global=2, block_size=5),
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("causal", [False, True])
def test_matches_dense_oracle(overrides, causal):
    m = make(**overrides)
    T = 21
    x = torch.randn(3, T, 16, dtype=torch.float64)
    mask = padded_mask(3, T, [T, 13, 0])
    mask[0, 4] = False  # a hole inside the sequence
    y = m(x, mask, causal=causal)
    torch.testing.assert_close(y, longformer_reference(m, x, mask, causal=causal), **F64)


def test_explicit_global_mask_and_gradients_match_oracle():
    m = make(window=2, num_global=5)
    T = 17
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    mask = padded_mask(2, T, [T, 11])
    gmask = torch.zeros(2, T, dtype=torch.bool)
    gmask[0, [3, 9, 16]] = True
    gmask[1, [0, 12]] = True  # position 12 is padding: never global
    y = m(x, mask, global_mask=gmask)
    ref = longformer_reference(m, x, mask, global_mask=gmask)
    torch.testing.assert_close(y, ref, **F64)
    g = torch.randn_like(y)
    params = [x] + list(m.parameters())
    grads = torch.autograd.grad((y * g).sum(), params)
    ref_grads = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **F64)


def test_wide_window_without_globals_equals_softmax():
    m = make(window=40, block_size=0)
    sm = create_mixer("softmax", dim=16, heads=2, dtype=torch.float64)
    sm.load_state_dict({k: v for k, v in m.state_dict().items() if not k.split(".")[0].endswith("global")})
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    mask = padded_mask(2, 29, [29, 20])
    for causal in (False, True):
        torch.testing.assert_close(m(x, mask, causal=causal), sm(x, mask, causal=causal), **F64)


def test_locality_by_gradient():
    w, T = 3, 25
    m = make(window=w)
    x = torch.randn(1, T, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    jac = torch.stack([torch.autograd.grad(y[0, i].sum(), x, retain_graph=True)[0][0].abs().sum(-1) for i in range(T)])
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs()  # (T, T)
    assert torch.all(jac[dist > w] == 0), "an output depends on a token outside its window"
    assert torch.all(jac[dist <= w] > 0), "an output ignores a token inside its window"


def test_global_row_is_full_attention_with_global_projections():
    m = make(num_global=2)
    sm = create_mixer("softmax", dim=16, heads=2, dtype=torch.float64)
    sm.q_proj.load_state_dict(m.q_global.state_dict())
    sm.k_proj.load_state_dict(m.k_global.state_dict())
    sm.v_proj.load_state_dict(m.v_global.state_dict())
    sm.out_proj.load_state_dict(m.out_proj.state_dict())
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    mask = padded_mask(2, 30, [30, 24])
    torch.testing.assert_close(m(x, mask)[:, :2], sm(x, mask)[:, :2], **F64)


def test_far_tokens_see_a_global_value_change():
    m = make(window=2, num_global=1)
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[0, 0] += 1.0  # the global token, outside every window from position 3 on
    diff = (m(x2) - y)[0].abs().sum(-1)  # (T,)
    assert torch.all(diff > 1e-8)


def test_global_projections_start_as_copies_and_errors():
    m = create_mixer("longformer", dim=16, heads=2)
    torch.testing.assert_close(m.q_global.weight, m.q_proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(m.v_global.bias, m.v_proj.bias, rtol=0, atol=0)
    x = torch.randn(2, 9, 16)
    with pytest.raises(ZooError, match="global_mask"):
        m(x, global_mask=torch.ones(2, 9))
    with pytest.raises(ZooError, match="global_mask"):
        m(x, global_mask=torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ZooError, match="window"):
        create_mixer("longformer", dim=16, heads=2, window=0)

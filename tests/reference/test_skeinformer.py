"""Skeinformer against the row-by-row oracle, exact softmax in the all-columns limit, and statistics."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.mixers import skeinformer
from zoo.mixers.skeinformer import counter_uniform, skein_attention
from zoo.reference.dense import allowed_from_mask, dense_attention
from zoo.reference.skeinformer import skein_reference

F64 = tol(torch.float64)


def build(**overrides):
    fields = {"dim": 16, "heads": 2, "sketch_size": 6}
    fields.update(overrides)
    torch.manual_seed(0)
    return create_mixer("skeinformer", dtype=torch.float64, **fields).eval()


def qkv(B: int, H: int, T: int, P: int, scale: float = 1.0):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, T, P, generator=gen, dtype=torch.float64) for _ in range(3))
    return q * scale / math.sqrt(P), k * scale, v


def exact(q, k, v, mask=None):
    return dense_attention(q, k, v, allowed_from_mask(mask, q.shape[2]), scale=1.0)


def projections(m, x):
    """Per-head q (scaled by 1/sqrt(p)), k, v of a built mixer."""
    B, T, D = x.shape
    H = m.config.heads

    def split(t):
        return t.reshape(B, T, H, D // H).transpose(1, 2)

    return split(m.q_proj(x)) / math.sqrt(D // H), split(m.k_proj(x)), split(m.v_proj(x))


MASKS = {
    "right": [[True] * 17, [True] * 11 + [False] * 6, [True] * 4 + [False] * 13],
    "holes": [[j % 3 != 1 for j in range(17)], [j >= 5 for j in range(17)], [True] * 17],
}


@pytest.mark.parametrize("layout", sorted(MASKS))
@pytest.mark.parametrize("sketch", [5, None])
def test_matches_oracle_for_its_draws(layout, sketch):
    q, k, v = qkv(3, 2, 17, 4)
    mask = torch.tensor(MASKS[layout])
    o, draw = skein_attention(q, k, v, mask, key=123, sketch_size=sketch)
    expected_d = [min(5 if sketch else max(1, int(4 * math.log(int(n)))), int(n)) for n in mask.sum(-1)]
    assert draw.d.tolist() == expected_d
    assert all(mask[b, draw.pilot_pos[b, : expected_d[b]]].all() for b in range(3)), "pilots must be real tokens"
    ref = skein_reference(q, k, v, mask, draw.pilot_pos, draw.columns, draw.d)  # also checks the columns
    torch.testing.assert_close(o * mask[:, None, :, None], ref * mask[:, None, :, None], **F64)


def test_gradients_match_oracle():
    q, k, v = qkv(2, 2, 12, 4)
    mask = torch.tensor([[True] * 12, [True] * 9 + [False] * 3])
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    weight = torch.linspace(-1, 1, 4, dtype=torch.float64)
    o, draw = skein_attention(q, k, v, mask, key=7, sketch_size=4)
    g_fast = torch.autograd.grad((o * mask[:, None, :, None] * weight).sum(), (q, k, v))
    ref = skein_reference(q, k, v, mask, draw.pilot_pos, draw.columns, draw.d)
    g_ref = torch.autograd.grad((ref * mask[:, None, :, None] * weight).sum(), (q, k, v))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("masked", [False, True])
def test_tiled_stages_match_oracle_values_and_gradients(monkeypatch, masked):
    # tiny tiles: many row / column tiles in both custom autograd Functions
    monkeypatch.setattr(skeinformer, "TILE", 40)
    monkeypatch.setattr(skeinformer, "PILOT_TILE", 50)
    q, k, v = qkv(2, 2, 23, 4, scale=1.5)
    mask = torch.tensor([[True] * 23, [True] * 15 + [False] * 8]) if masked else None
    keep = torch.ones(2, 23, dtype=torch.bool) if mask is None else mask
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    weight = torch.randn(2, 2, 23, 4, dtype=torch.float64) * keep[:, None, :, None]
    o, draw = skein_attention(q, k, v, mask, key=5, sketch_size=7)
    g_fast = torch.autograd.grad((o * weight).sum(), (q, k, v))
    ref = skein_reference(q, k, v, mask, draw.pilot_pos, draw.columns, draw.d)
    torch.testing.assert_close(o * keep[:, None, :, None], ref * keep[:, None, :, None], **F64)
    g_ref = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, **F64)


def test_duplicate_pilot_positions_get_one_gradient():
    # 3 real tokens and 3 pilot draws: positions repeat; the gradient must still match the oracle
    q, k, v = qkv(1, 1, 3, 2)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    for key in range(6):
        o, draw = skein_attention(q, k, v, None, key=key, sketch_size=2)
        ref = skein_reference(q, k, v, None, draw.pilot_pos, draw.columns, draw.d)
        g_fast = torch.autograd.grad(o.sum(), (q, k, v))
        g_ref = torch.autograd.grad(ref.sum(), (q, k, v))
        for a, b in zip(g_fast, g_ref):
            torch.testing.assert_close(a, b, **F64)


def test_exact_when_every_column_is_sampled():
    m = build(sketch_size=11)
    x = torch.randn(3, 17, 16, dtype=torch.float64)
    mask = torch.tensor(MASKS["right"])  # lengths 17 (> d: sampled), 11 and 4 (<= d: exact)
    y = m(x, mask)
    q, k, v = projections(m, x)
    o = exact(q, k, v, mask)
    expected = m.out_proj(o.transpose(1, 2).reshape(3, 17, 16)) * mask[..., None]
    torch.testing.assert_close(y[1:], expected[1:], **F64)
    assert (y[0] - expected[0]).abs().max() > 1e-6, "17 > sketch_size columns: an approximation"
    full = build(sketch_size=17)
    full.load_state_dict(m.state_dict())
    torch.testing.assert_close(full(x, mask), expected, **F64)
    # a single real token: its own value row
    one = torch.zeros(1, 17, dtype=torch.bool)
    one[0, 5] = True
    torch.testing.assert_close(m(x[:1], one)[0, 5], m.out_proj(m.v_proj(x[0, 5])), **F64)


def test_pilot_rows_exact_and_rows_convex():
    q, k, v = qkv(2, 2, 40, 4, scale=2.0)
    mask = torch.tensor([[True] * 40, [True] * 29 + [False] * 11])
    o, draw = skein_attention(q, k, v, mask, key=99, sketch_size=6)
    ex = exact(q, k, v, mask)
    for b in range(2):
        pilots = draw.pilot_pos[b, : int(draw.d[b])]
        torch.testing.assert_close(o[b][:, pilots], ex[b][:, pilots], **F64)
        others = torch.ones(40, dtype=torch.bool)
        others[pilots] = False
        others &= mask[b]
        assert (o[b][:, others] - ex[b][:, others]).abs().max() > 1e-4  # the others are estimates
        vr = v[b][:, mask[b]]  # (H, N, P)
        lo, hi = vr.amin(dim=1, keepdim=True), vr.amax(dim=1, keepdim=True)
        rows = o[b][:, mask[b]]
        assert ((rows >= lo - 1e-12) & (rows <= hi + 1e-12)).all(), "rows must be convex combinations"


def test_error_shrinks_with_sketch_size():
    q, k, v = qkv(1, 2, 256, 16, scale=1.0)
    ex = exact(q, k, v)

    def rel_rms(d: int) -> float:
        errs = [((skein_attention(q, k, v, None, key, d)[0] - ex).norm() / ex.norm()).item() for key in range(4)]
        return sum(errs) / len(errs)

    errors = [rel_rms(d) for d in (8, 64, 128, 192, 256)]  # about 0.81, 0.66, 0.45, 0.25, 0
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0.0, errors
    assert errors[1] < 0.9 * errors[0] and errors[3] < 0.7 * errors[1], errors
    assert errors[4] < 1e-12, "all 256 columns sampled: exact"


def test_column_sampling_follows_weights():
    # Gumbel-top-1 over log w with the counter-based uniforms picks j with probability w_j / sum w
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.0, 5.0, 4.5], dtype=torch.float64)
    lanes = torch.arange(20000)[:, None]
    u = counter_uniform(31, lanes, torch.arange(8)[None, :])  # (20000, 8)
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.01
    picks = (torch.log(w) - torch.log(-torch.log(u))).argmax(dim=-1)
    freq = torch.bincount(picks, minlength=8).double() / 20000
    p = w / w.sum()
    sigma = (p * (1 - p) / 20000).sqrt()
    assert ((freq - p).abs() <= 4 * sigma + 1e-12).all(), (freq, p)


def test_randomness_seeded_and_fixed_in_eval():
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    a, b, c = build(seed=1), build(seed=1), build(seed=2)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)  # fixed in eval
    assert not torch.allclose(a(x), c(x)), "different seeds, different eval draws"
    a.train(), b.train()
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)  # same generator seed, same training draws
    assert not torch.allclose(a(x), ya), "training draws are fresh on every call"
    a.reseed(1)
    b.reseed(1)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    r = build(seed=1, resample_in_eval=True)
    assert not torch.allclose(r(x), r(x)), "resample_in_eval draws on every call"


def test_sketch_size_none_and_bad_config():
    m = build(sketch_size=None)
    assert m(torch.randn(1, 9, 16, dtype=torch.float64)).shape == (1, 9, 16)
    with pytest.raises(ZooError, match="sketch_size"):
        create_mixer("skeinformer", sketch_size=0)
    with pytest.raises(ZooError, match="resample_in_eval"):
        create_mixer("skeinformer", resample_in_eval="yes")

"""TransNormer (NormAttention ``transnormer``, DiagAttention ``transnormer_diag``) against oracles."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.functional import causal_linear_attention, urpe
from zoo.mixers.transnormer import TransNormerMixer, transnormer_stack
from zoo.mixers.transnormer_diag import DiagAttentionMixer
from zoo.reference.dense import dense_attention
from zoo.reference.transnormer import diag_attention_reference, norm_attention_reference

F64 = tol(torch.float64)


def build(name: str, **overrides):
    defaults = {"dim": 16, "heads": 2}
    defaults.update(overrides)
    torch.manual_seed(0)
    return create_mixer(name, dtype=torch.float64, **defaults).eval()


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


def pre_out_proj(mixer, x, mask=None, causal=False) -> torch.Tensor:
    """The input of W_O (the normalised merged heads), captured with a hook."""
    seen = []
    handle = mixer.out_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        mixer(x, mask, causal=causal)
    finally:
        handle.remove()
    return seen[0]


# --- NormAttention ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["t1", "t2"])
@pytest.mark.parametrize("use_urpe", [True, False])
def test_norm_bidirectional_equals_quadratic_form(variant, use_urpe):
    m = build("transnormer", variant=variant, urpe=use_urpe)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    mask = ragged_mask(2, 19, [19, 12])
    torch.testing.assert_close(m(x, mask), norm_attention_reference(m, x, mask), **F64)
    torch.testing.assert_close(m(x), norm_attention_reference(m, x), **F64)


@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 64])
def test_norm_causal_chunked_equals_recurrence(chunk):
    m = build("transnormer", chunk_size=chunk, variant="t2" if chunk == 3 else "t1")
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    mask = ragged_mask(2, 13, [13, 9])
    torch.testing.assert_close(m(x, mask, causal=True), norm_attention_reference(m, x, mask, causal=True), **F64)


def test_norm_causal_gradients_match_recurrence():
    m = build("transnormer", chunk_size=4)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    mask = ragged_mask(2, 11, [11, 7])
    grads = []
    for fn in (lambda: m(x, mask, causal=True), lambda: norm_attention_reference(m, x, mask, causal=True)):
        m.zero_grad()
        (fn() * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert set(grads[0]) == {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
                             "v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias", "theta"}
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_causal_linear_attention_numerator_and_normalizer(chunk):
    B, H, T, R, P = 2, 3, 21, 6, 4
    q, k = torch.rand(B, H, T, R, dtype=torch.float64), torch.rand(B, H, T, R, dtype=torch.float64)
    v = torch.randn(B, H, T, P, dtype=torch.float64)
    num, z = causal_linear_attention(q, k, v, chunk=chunk, normalizer=True)
    state, ksum = torch.zeros(B, H, R, P, dtype=torch.float64), torch.zeros(B, H, R, dtype=torch.float64)
    for t in range(T):
        state = state + k[:, :, t, :, None] * v[:, :, t, None, :]
        ksum = ksum + k[:, :, t]
        torch.testing.assert_close(num[:, :, t], torch.einsum("bhr,bhrp->bhp", q[:, :, t], state), **F64)
        torch.testing.assert_close(z[:, :, t], (q[:, :, t] * ksum).sum(-1), **F64)
    assert causal_linear_attention(q, k, v, chunk=chunk).shape == (B, H, T, P)


@pytest.mark.parametrize("name", ["transnormer", "transnormer_diag"])
@pytest.mark.parametrize("causal", [False, True])
def test_scale_invariance_and_unit_rms(name, causal):
    m = build(name, variant="t1", **({"chunk_size": 4} if name == "transnormer" else {"block_size": 8}))
    x = torch.randn(2, 17, 16, dtype=torch.float64)
    mask = ragged_mask(2, 17, [17, 10])
    z = pre_out_proj(m, x, mask, causal)
    rms = z.square().mean(-1).sqrt()[mask]
    if name == "transnormer_diag":  # a row whose ReLU weights are all 0 is 0 and stays 0
        assert (rms > 0).float().mean() > 0.5
        rms = rms[rms > 0]
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-6, rtol=0)
    with torch.no_grad():
        m.v_proj.weight.mul_(7.5)
        m.v_proj.bias.mul_(7.5)
    torch.testing.assert_close(pre_out_proj(m, x, mask, causal)[mask], z[mask], atol=1e-6, rtol=1e-6)


def test_urpe_is_relative():
    p = 8
    u = torch.randn(p, dtype=torch.float64)
    u = u / u.norm()
    theta = torch.rand(p // 2, dtype=torch.float64)
    q, k = torch.randn(p, dtype=torch.float64), torch.randn(p, dtype=torch.float64)

    def dot(t1: int, t2: int) -> torch.Tensor:
        qt = urpe(q[None], u, theta, torch.tensor([t1]))[0]
        kt = urpe(k[None], u, theta, torch.tensor([t2]))[0]
        return qt @ kt

    for t1, t2, shift in [(0, 3, 5), (7, 2, 11), (4, 4, 100)]:
        torch.testing.assert_close(dot(t1, t2), dot(t1 + shift, t2 + shift), **F64)
    assert abs(float(dot(0, 3) - dot(0, 4))) > 1e-6, "URPE must depend on the offset"
    # both maps are orthogonal: norms are kept
    torch.testing.assert_close(urpe(q[None], u, theta, torch.tensor([9]))[0].norm(), q.norm(), **F64)


@pytest.mark.parametrize("name", ["transnormer", "transnormer_diag"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance_and_faithful_mask(name, causal):
    extra = {"chunk_size": 4} if name == "transnormer" else {"block_size": 8}
    N, pad = 13, 6
    x = torch.randn(1, N + pad, 16, dtype=torch.float64)
    x_junk = x.clone()
    x_junk[:, N:] = 50 * torch.randn(1, pad, 16, dtype=torch.float64)
    mask = ragged_mask(1, N + pad, [N])
    m = build(name, variant="t2", **extra)
    torch.testing.assert_close(m(x_junk, mask, causal=causal)[:, :N], m(x[:, :N], causal=causal), **F64)
    faithful = build(name, variant="t2", faithful_mask=True, **extra)
    faithful.load_state_dict(m.state_dict())
    y_f = faithful(x_junk, mask, causal=causal)
    assert torch.equal(y_f[:, N:], torch.zeros_like(y_f[:, N:])), "C2 holds in faithful mode too"
    if causal:  # causal: padding sits in the future of every real token, it cannot leak
        torch.testing.assert_close(y_f[:, :N], m(x[:, :N], causal=True), **F64)
    else:
        assert (y_f[:, :N] - m(x[:, :N])).abs().max() > 1e-3, "faithful mode must let padding leak"


def test_householder_vector_is_seeded_frozen_unit():
    a, b, c = build("transnormer", seed=3), build("transnormer", seed=3), build("transnormer", seed=4)
    assert "householder_u" not in dict(a.named_parameters())
    assert "householder_u" in a.state_dict()
    torch.testing.assert_close(a.householder_u, b.householder_u, rtol=0, atol=0)
    assert not torch.allclose(a.householder_u, c.householder_u)
    torch.testing.assert_close(a.householder_u.norm(), torch.tensor(1.0, dtype=torch.float64), **F64)
    assert a.theta.requires_grad and a.theta.shape == (4,)


def test_bad_config_errors():
    with pytest.raises(ZooError, match="urpe.*even"):
        create_mixer("transnormer", dim=6, heads=2)
    with pytest.raises(ZooError, match="variant"):
        create_mixer("transnormer_diag", variant="t3")
    with pytest.raises(ZooError, match="block_size"):
        create_mixer("transnormer_diag", block_size=0)


# --- DiagAttention ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["t1", "t2"])
@pytest.mark.parametrize("causal", [False, True])
def test_diag_matches_dense_block_oracle(variant, causal):
    m = build("transnormer_diag", variant=variant, block_size=8)
    x = torch.randn(2, 19, 16, dtype=torch.float64)  # 19 = 2 full blocks + a partial one
    mask = ragged_mask(2, 19, [19, 11])
    torch.testing.assert_close(m(x, mask, causal=causal), diag_attention_reference(m, x, mask, causal), **F64)


def test_diag_blocks_do_not_interact():
    m = build("transnormer_diag", block_size=8)
    x = torch.randn(1, 24, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 8:16] += torch.randn(1, 8, 16, dtype=torch.float64)
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y2[:, :8], y[:, :8], **F64)
    torch.testing.assert_close(y2[:, 16:], y[:, 16:], **F64)
    assert (y2[:, 8:16] - y[:, 8:16]).abs().max() > 1e-3


def test_diag_t2_single_block_without_urpe_is_softmax_attention():
    m = build("transnormer_diag", variant="t2", block_size=64, urpe=False)
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    mask = ragged_mask(2, 20, [20, 14])
    for causal in (False, True):
        allowed = mask[:, None, None, :] & (torch.ones(20, 20, dtype=torch.bool).tril() if causal else True)
        q, k, v = (t.reshape(2, 20, 2, 8).transpose(1, 2) for t in (m.q_proj(x), m.k_proj(x), m.v_proj(x)))
        o = dense_attention(q, k, v, allowed)  # (B, H, T, P)
        expected = m.out_proj(o.transpose(1, 2).reshape(2, 20, 16)) * mask[..., None]
        torch.testing.assert_close(m(x, mask, causal=causal), expected, **F64)


# --- the paper's arrangement ------------------------------------------------------------------


def test_transnormer_stack_arrangement():
    layers = transnormer_stack(5, dim=16, heads=2, block_size=8, chunk_size=4, seed=10, dtype=torch.float64)
    kinds = [type(layer) for layer in layers]
    assert kinds == [DiagAttentionMixer, DiagAttentionMixer, TransNormerMixer, TransNormerMixer, TransNormerMixer]
    assert [layer.config.seed for layer in layers] == [10, 11, 12, 13, 14]
    assert [type(layer) for layer in transnormer_stack(4, dim=16, heads=2)] == [DiagAttentionMixer] * 2 + [TransNormerMixer] * 2
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    mask = ragged_mask(2, 21, [21, 15])
    for layer in layers:
        x = x + layer(x, mask, causal=True)
    assert torch.isfinite(x).all()
    with pytest.raises(ZooError, match="depth"):
        transnormer_stack(0, dim=16, heads=2)

"""PoNet against the loop oracle (zoo/reference/ponet.py) and MIXERS.md 2.7, plus backend agreement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.functional import local_max_pool, segment_ids_fixed, segment_max, segment_max_contiguous, torch_scatter_available
from zoo.reference.ponet import ponet_reference

F64 = tol(torch.float64)


def make(dtype=torch.float64, **overrides):
    fields = dict(dim=16, heads=2, num_segments=4)
    fields.update(overrides)
    torch.manual_seed(0)
    return create_mixer("ponet", dtype=dtype, **fields)


def ragged_mask(B, T, lengths):
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


def set_linear(layer: nn.Linear, weight=None, bias=None):
    with torch.no_grad():
        layer.weight.copy_(torch.zeros_like(layer.weight) if weight is None else weight)
        layer.bias.copy_(torch.zeros_like(layer.bias) if bias is None else bias)


def identity_out(m):
    set_linear(m.out_proj, torch.eye(m.dim, dtype=m.out_proj.weight.dtype))


@pytest.mark.parametrize(
    "overrides, T, lengths",
    [
        (dict(), 23, [23, 17, 9]),  # num_segments, ragged lengths -> scatter path
        (dict(), 24, [24, 24, 24]),  # one segment length -> contiguous path, T multiple of it
        (dict(segment_len=5), 23, [23, 14, 1]),  # fixed length, last segment shorter
        (dict(faithful_segments=True, num_segments=3), 20, [20, 12, 0]),  # LRA formula, empty row
        (dict(local_kernel=5, segment_backend="scatter"), 19, [19, 11, 6]),
        (dict(num_segments=1), 13, [13, 5, 13]),  # SMP is a global max
        (dict(local_kernel=1, segment_len=4), 10, [10, 10, 7]),  # no LMP; last segment shorter
    ],
)
def test_matches_loop_oracle_outputs_and_gradients(overrides, T, lengths):
    m = make(**overrides)
    x = torch.randn(3, T, 16, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask(3, T, lengths)
    y = m(x, mask)
    ref = ponet_reference(m, x, mask)
    torch.testing.assert_close(y, ref, **F64)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), [x, *m.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [x, *m.parameters()])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **F64)


def test_explicit_segment_ids_match_oracle():
    m = make()
    T = 21
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask(2, T, [21, 15])
    # ragged, non-contiguous segments (a segment id may come back later in the sequence)
    ids = torch.randint(0, 6, (2, T))
    y = m(x, mask, segment_ids=ids)
    ref = ponet_reference(m, x, mask, segment_ids=ids)
    torch.testing.assert_close(y, ref, **F64)
    gx = torch.autograd.grad(y.square().sum(), x)[0]
    gx_ref = torch.autograd.grad(ref.square().sum(), x)[0]
    torch.testing.assert_close(gx, gx_ref, **F64)
    # int32 ids are accepted too
    torch.testing.assert_close(m(x, mask, segment_ids=ids.int()), y, **F64)


def test_global_aggregation_is_mean_query_attention_over_keys():
    """2.7.2: with s = l = 0, G = 1 and W_O = I, every real output row is g (per head)."""
    m = make()
    T, N = 14, 10
    x = torch.randn(1, T, 16, dtype=torch.float64)
    mask = ragged_mask(1, T, [N])
    for layer in (m.segment_proj, m.local_proj):
        set_linear(layer)
    set_linear(m.gate_proj, bias=torch.ones(16, dtype=torch.float64))
    identity_out(m)
    y = m(x, mask)
    with torch.no_grad():
        Q = m.q_proj(x[0, :N]).view(N, 2, 8).transpose(0, 1)  # (H, N, P)
        K = m.k_proj(x[0, :N]).view(N, 2, 8).transpose(0, 1)  # (H, N, P)
        weights = torch.softmax(Q.mean(dim=1, keepdim=True) @ K.transpose(1, 2) / math.sqrt(8), dim=-1)  # (H, 1, N)
        g = (weights @ K).reshape(16)  # (D,): heads in channel order
    torch.testing.assert_close(y[0, :N], g.expand(N, 16), **F64)
    assert torch.equal(y[0, N:], torch.zeros(T - N, 16, dtype=torch.float64))


def test_segment_max_pooling_constant_within_segment():
    """2.7.3: with GA = 0, G = 1, l = 0 and W_O = I, out = s: the segment's channel-wise max of S."""
    m = make(segment_len=4)
    T = 18
    x = torch.randn(1, T, 16, dtype=torch.float64)
    for layer in (m.q_proj, m.k_proj, m.local_proj):
        set_linear(layer)
    set_linear(m.gate_proj, bias=torch.ones(16, dtype=torch.float64))
    identity_out(m)
    y = m(x)
    S = m.segment_proj(x)[0].detach()  # (T, D)
    for start in range(0, T, 4):
        block = slice(start, min(start + 4, T))
        want = S[block].amax(dim=0)
        torch.testing.assert_close(y[0, block], want.expand_as(y[0, block]), **F64)


def test_local_max_pooling_window_of_three():
    """2.7.4: with GA = 0, s = 0 and W_O = I, out_i = max(L_{i-1}, L_i, L_{i+1}) within [0, T)."""
    m = make()
    T = 11
    x = torch.randn(2, T, 16, dtype=torch.float64)
    for layer in (m.q_proj, m.k_proj, m.segment_proj):
        set_linear(layer)
    identity_out(m)
    y = m(x)
    L = m.local_proj(x).detach()  # (B, T, D)
    for i in range(T):
        want = L[:, max(0, i - 1) : i + 2].amax(dim=1)
        torch.testing.assert_close(y[:, i], want, **F64)


def test_locality_when_global_aggregation_is_constant():
    """2.7.3: with W_Q = W_K = 0, x_j moves out_i only if j is in i's segment or 3-window."""
    m = make(segment_len=5)
    for layer in (m.q_proj, m.k_proj):
        set_linear(layer)
    T, i = 20, 7  # i's segment is 5..9, its window 6..8
    x = torch.randn(1, T, 16, dtype=torch.float64)
    y = m(x)
    for j in range(T):
        x2 = x.clone()
        x2[0, j] += 3.0 * torch.randn(16, dtype=torch.float64)
        moved = not torch.allclose(m(x2)[0, i], y[0, i], **F64)
        assert moved == (5 <= j <= 9), f"position {j}: moved={moved}"


def test_padding_invariance_with_segment_len_and_ids():
    """2.7.5 / C3: real outputs do not depend on trailing padding (segment_len, explicit ids)."""
    m = make(segment_len=3)
    N, pad = 10, 7
    x = torch.randn(1, N + pad, 16, dtype=torch.float64)
    mask = ragged_mask(1, N + pad, [N])
    torch.testing.assert_close(m(x, mask)[:, :N], m(x[:, :N]), **F64)
    ids = torch.randint(0, 4, (1, N + pad))
    torch.testing.assert_close(
        m(x, mask, segment_ids=ids)[:, :N], m(x[:, :N], segment_ids=ids[:, :N]), **F64
    )


def test_parameter_count_and_no_value_projection():
    for D in (16, 64):
        m = create_mixer("ponet", dim=D, heads=4)
        assert sum(p.numel() for p in m.parameters()) == 6 * D * D + 6 * D
        assert not hasattr(m, "v_proj")


def test_padded_rows_zero_before_output_projection():
    """2.7.1: y rows of padding are zero before W_O: with W_O's bias only, padded rows stay 0."""
    m = make()
    x = 100 * torch.randn(2, 9, 16, dtype=torch.float64)
    mask = ragged_mask(2, 9, [9, 4])
    y = m(x, mask)
    assert torch.equal(y[1, 4:], torch.zeros(5, 16, dtype=torch.float64))
    assert torch.isfinite(y).all()


# --- segment definitions -----------------------------------------------------------------------


def test_faithful_segments_reproduce_lra_formula():
    m = create_mixer("ponet", dim=16, heads=2, num_segments=32, faithful_segments=True)
    ids = m.segment_ids(1024)[0]
    counts = torch.bincount(ids)
    assert counts.numel() == 32 and counts[:31].eq(33).all() and counts[31] == 1
    m = create_mixer("ponet", dim=16, heads=2, num_segments=64, faithful_segments=True)
    counts = torch.bincount(m.segment_ids(2048)[0])
    assert counts.numel() == 63 and counts[-1] == 2


def test_default_segments_from_unpadded_length():
    m = create_mixer("ponet", dim=16, heads=2, num_segments=4)
    mask = ragged_mask(2, 20, [20, 9])
    assert m.segment_lengths(20, mask) == [5, 3]
    ids = m.segment_ids(20, mask)
    assert ids[1, :9].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ids[0].max() == 3


# --- backends ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [24, 23])  # T a multiple of the segment length, and not
@pytest.mark.parametrize("ties", [False, True])
def test_segment_backends_agree_exactly(T, ties):
    backends = ["auto", "contiguous", "scatter"] + (["torch_scatter"] if torch_scatter_available() and not ties else [])
    x = torch.randn(2, T, 16, dtype=torch.float32)
    if ties:  # coarse values: many exact ties inside segments, also after the projection
        x = x.round()
    mask = ragged_mask(2, T, [T, T])
    results = []
    for backend in backends:
        m = make(dtype=torch.float32, segment_backend=backend, segment_len=6)
        if ties:
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_((p * 4).round() / 4)
        xb = x.clone().requires_grad_(True)
        y = m(xb, mask)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        results.append((y.detach(), xb.grad, [p.grad for p in m.parameters()]))
    y0, gx0, gp0 = results[0]
    for backend, (y, gx, gp) in zip(backends[1:], results[1:]):
        assert torch.equal(y, y0), backend
        assert torch.equal(gx, gx0), backend
        for a, b in zip(gp, gp0):
            assert torch.equal(a, b), backend


@pytest.mark.parametrize("T, seg_len", [(12, 4), (13, 4), (5, 8)])
def test_segment_max_functions_agree(T, seg_len):
    values = torch.randn(2, T, 6, dtype=torch.float64, requires_grad=True)
    ids = segment_ids_fixed(seg_len, T, 2)
    n_seg = -(-T // seg_len)
    a = segment_max_contiguous(values, seg_len)
    b = segment_max(values, ids, n_seg, "scatter")
    assert torch.equal(a, b)
    w = torch.randn_like(a)
    ga = torch.autograd.grad((a * w).sum(), values)[0]
    gb = torch.autograd.grad((b * w).sum(), values)[0]
    assert torch.equal(ga, gb)
    for s in range(n_seg):
        want = values[:, s * seg_len : (s + 1) * seg_len].amax(dim=1)
        assert torch.equal(a[:, s], want)


def test_scatter_gradient_not_diluted_when_segment_max_is_zero():
    # torch's scatter_reduce(amax, include_self=False) backward also counts a start value equal to
    # the maximum as a winner; segment_max must not start from zeros.
    values = torch.tensor([[[0.0], [0.0], [-1.0], [2.0]]], requires_grad=True)
    ids = torch.tensor([[0, 0, 0, 1]])
    out = segment_max(values, ids, 2, "scatter")
    (grad,) = torch.autograd.grad(out.sum(), values)
    assert grad.flatten().tolist() == [0.5, 0.5, 0.0, 1.0]


def test_local_max_pool_kernel_five():
    v = torch.randn(1, 9, 3)
    out = local_max_pool(v, 5)
    for i in range(9):
        assert torch.equal(out[0, i], v[0, max(0, i - 2) : i + 3].amax(dim=0))


def test_contiguous_backend_errors_clearly():
    m = make(segment_backend="contiguous")
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    with pytest.raises(ZooError, match="segment_backend.*contiguous"):
        m(x, ragged_mask(2, 12, [12, 5]))  # different segment lengths per sequence
    with pytest.raises(ZooError, match="segment_backend.*segment_ids"):
        m(x, segment_ids=torch.zeros(2, 12, dtype=torch.long))


@pytest.mark.skipif(torch_scatter_available(), reason="torch-scatter is installed")
def test_torch_scatter_backend_missing_is_a_clear_error():
    with pytest.raises(ZooError, match="segment_backend.*torch-scatter"):
        create_mixer("ponet", dim=16, heads=2, segment_backend="torch_scatter")


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, match",
    [
        (torch.zeros(2, 8), "segment_ids: expected an integer dtype"),
        (torch.zeros(2, 8, dtype=torch.bool), "segment_ids: expected an integer dtype"),
        (torch.zeros(2, 7, dtype=torch.long), r"segment_ids: expected shape \(B, T\)"),
        (torch.full((2, 8), -1), r"segment_ids: expected ids in \[0, T\)"),
        (torch.full((2, 8), 8), r"segment_ids: expected ids in \[0, T\)"),
        ([[0] * 8] * 2, "segment_ids: expected an integer tensor"),
    ],
)
def test_segment_ids_validated(ids, match):
    m = make()
    with pytest.raises(ZooError, match=match):
        m(torch.randn(2, 8, 16, dtype=torch.float64), segment_ids=ids)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_segments=0), "num_segments"),
        (dict(segment_len=0), "segment_len"),
        (dict(local_kernel=4), "local_kernel"),
        (dict(segment_backend="cuda"), "segment_backend"),
        (dict(faithful_segments=True, segment_len=4), "faithful_segments"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ZooError, match=field):
        create_mixer("ponet", dim=16, heads=2, **overrides)


def test_flops_formula():
    from zoo import get_spec
    from zoo.mixers.ponet import PoNetConfig

    c = PoNetConfig(dim=64, heads=4)
    f = get_spec("ponet").flops(c, 2, 100)
    assert f == 12 * 2 * 100 * 64 * 64 + 2 * 100 * 64 * 11

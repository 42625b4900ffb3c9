"""GLA (``gla``): chunked with secondary chunking == the token-by-token recurrence, values and
gradients, causal and bidirectional, masks, any T, strong decays without overflow."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.reference.decay_recurrence import decay_recurrence
from zoo.reference.gla import gla_reference
from zoo.scan import bidirectional_scan, chunked_channel_decay_attention, chunked_decay_attention

F64 = tol(torch.float64)


def build(**overrides):
    config = {"dim": 16, "heads": 2, "gate_low_rank": 4, "chunk_size": 8, "sub_chunk": 4}
    config.update(overrides)
    torch.manual_seed(0)
    m = create_mixer("gla", dtype=torch.float64, **config).eval()
    with torch.no_grad():
        m.norm_weight.uniform_(0.5, 1.5)
    return m


def ragged_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk,sub", [(8, 4), (8, 8), (4, 1), (16, 4), (64, 16)])
def test_layer_equals_recurrence(causal, chunk, sub):
    m = build(chunk_size=chunk, sub_chunk=sub)
    x = torch.randn(2, 21, 16, dtype=torch.float64)  # 21: not a multiple of any chunk
    mask = ragged_mask(2, 21, [21, 13])
    torch.testing.assert_close(m(x, mask, causal=causal), gla_reference(m, x, mask, causal), **F64)


@pytest.mark.parametrize("causal", [True, False])
def test_holes_in_the_mask_neither_write_nor_decay(causal):
    m = build()
    x = torch.randn(1, 14, 16, dtype=torch.float64)
    mask = torch.ones(1, 14, dtype=torch.bool)
    mask[0, [0, 5, 6, 11]] = False
    y = m(x, mask, causal=causal)
    torch.testing.assert_close(y, gla_reference(m, x, mask, causal), **F64)
    torch.testing.assert_close(y[:, mask[0]], m(x[:, mask[0]], causal=causal), **F64)


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_match_recurrence(causal):
    m = build()
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask(2, 11, [11, 7])
    grads = []
    for fn in (lambda: m(x, mask, causal=causal), lambda: gla_reference(m, x, mask, causal)):
        m.zero_grad()
        x.grad = None
        (fn() * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in m.named_parameters()}})
    assert len(grads[0]) == 10  # x and the 9 parameters
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **F64, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strong_decays_stay_finite_and_exact(dtype):
    """log g down to -60 per token: a chunk-start rescaling would need exp(+900) and overflow."""
    B, H, T, K, V = 1, 2, 37, 4, 3
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(B, H, T, K, generator=gen), torch.randn(B, H, T, K, generator=gen)
    v = torch.randn(B, H, T, V, generator=gen)
    log_g = -60.0 * torch.rand(B, H, T, K, generator=gen)
    log_g[..., 0] = -1e-3  # one slowly decaying channel keeps the output non-trivial
    expected = decay_recurrence(q.double(), k.double(), v.double(), log_g.double().exp())
    got = chunked_channel_decay_attention(q.to(dtype), k.to(dtype), v.to(dtype), log_g.to(dtype), chunk=16, sub_chunk=4)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, **tol(dtype))


def test_channel_core_with_equal_channels_is_the_scalar_core():
    B, H, T, K, V = 2, 3, 19, 4, 5
    q, k, v = torch.randn(B, H, T, K).double(), torch.randn(B, H, T, K).double(), torch.randn(B, H, T, V).double()
    log_s = -torch.rand(B, H, T).double()
    per_channel = log_s[..., None].expand(B, H, T, K)
    for core_args in ((chunked_decay_attention, log_s, {}), (chunked_channel_decay_attention, per_channel, {"sub_chunk": 2})):
        core, lg, kw = core_args
        torch.testing.assert_close(core(q, k, v, lg, chunk=4, **kw), decay_recurrence(q, k, v, log_s.exp()), **F64)
        torch.testing.assert_close(
            bidirectional_scan(core, q, k, v, lg, chunk=4, **kw),
            decay_recurrence(q, k, v, log_s.exp(), bidirectional=True),
            **F64,
        )


def test_bad_config_errors():
    with pytest.raises(ZooError, match="sub_chunk"):
        create_mixer("gla", chunk_size=64, sub_chunk=24)
    with pytest.raises(ZooError, match="expand_k"):
        create_mixer("gla", dim=16, heads=4, expand_k=0.1)
    with pytest.raises(ZooError, match="gate_low_rank"):
        create_mixer("gla", gate_low_rank=0)


@pytest.mark.parametrize("name", ["gla", "retnet", "mamba2"])
@pytest.mark.parametrize("causal", [True, False])
def test_no_t_by_t_tensor_outside_a_chunk(name, causal):
    """Every tensor of a forward + backward has at most one axis as long as T (the chunked scans
    of ``gla``, ``retnet``, ``mamba2`` never form a T x T matrix)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    T = 300
    shapes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
            return out

    torch.manual_seed(0)
    m = create_mixer(name, dim=16, heads=2, chunk_size=8, **({"sub_chunk": 4} if name == "gla" else {}))
    x = torch.randn(1, T, 16, requires_grad=True)
    with Record():
        m(x, causal=causal).sum().backward()
    assert len(shapes) > 20
    long_axes = [s for s in shapes if sum(d >= T for d in s) > 1]
    assert not long_axes, long_axes[:3]

"""The generation state API over the registry: prefill + step-by-step == the causal forward.

Skips come from the spec: every causal mixer must declare ``spec.state`` and pass; a mixer without
a causal variant must refuse the API with one clear error.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zoo import ZooError, create_mixer, get_mixer_class, get_spec, list_mixers
from zoo.state import MixerState, StateSize

MIXERS = list_mixers()
CAUSAL = [n for n in MIXERS if get_spec(n).causal]
NON_CAUSAL = [n for n in MIXERS if not get_spec(n).causal]
# issue 16: fp64 to 1e-10, fp32 to 1e-4
EXACT = {torch.float64: dict(atol=1e-10, rtol=1e-8), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def build(name: str, dtype: torch.dtype = torch.float64, **overrides):
    cfg = get_mixer_class(name).Config.tiny()
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields.update(overrides)
    torch.manual_seed(0)
    return create_mixer(name, dtype=dtype, **fields).eval()


def generate(m, x, mask, split: int, chunk_size: int):
    """Prefill x[:, :split] in chunks, then step through the rest one token at a time."""
    state = m.init_state(x.shape[0])
    with torch.no_grad():
        outs = []
        if split:
            y, state = m.prefill(x[:, :split], state, None if mask is None else mask[:, :split], chunk_size=chunk_size)
            outs.append(y)
        for t in range(split, x.shape[1]):
            y, state = m.step(x[:, t : t + 1], state, None if mask is None else mask[:, t : t + 1])
            outs.append(y)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_mixers_declare_a_state(name):
    assert isinstance(get_spec(name).state, StateSize)


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("split,chunk", [(0, 1), (13, 5), (29, 64)])
def test_prefill_and_steps_equal_causal_forward(name, dtype, split, chunk):
    m = build(name, dtype)
    x = torch.randn(2, 29, m.dim, dtype=dtype)
    with torch.no_grad():
        ref = m(x, causal=True)
    y, state = generate(m, x, None, split, chunk)
    torch.testing.assert_close(y, ref, **EXACT[dtype])
    assert state.position == 29


@pytest.mark.parametrize("name", [n for n in CAUSAL if get_spec(n).key_padding_mask])
@pytest.mark.parametrize("split,chunk", [(0, 1), (17, 4), (29, 64)])
def test_padded_prompts_equal_causal_forward(name, split, chunk):
    """Left padding (row 0), right padding (row 1), holes (row 2) and a fully padded row (row 3)."""
    m = build(name)
    x = torch.randn(4, 29, m.dim, dtype=torch.float64)
    mask = torch.ones(4, 29, dtype=torch.bool)
    mask[0, :9] = False
    mask[1, 20:] = False
    mask[2, 3:6] = False
    mask[2, 14] = False
    mask[3] = False
    with torch.no_grad():
        ref = m(x, mask, causal=True)
    y, _ = generate(m, x, mask, split, chunk)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, **EXACT[torch.float64])
    assert (y[~mask] == 0).all()


@pytest.mark.parametrize("name", CAUSAL)
def test_state_size_follows_its_declared_class(name):
    """Bytes held after T tokens: equal for every T (constant / O(w)) or growing with T (O(T))."""
    m = build(name, torch.float32)
    sizes = []
    for T in (64, 128, 256):
        state = m.init_state(1)
        with torch.no_grad():
            _, state = m.prefill(torch.randn(1, T, m.dim), state, chunk_size=32)
            _, state = m.step(torch.randn(1, 1, m.dim), state)
        sizes.append(state.nbytes())
    if get_spec(name).state == StateSize.LINEAR:
        assert sizes[0] < sizes[1] < sizes[2], sizes
    else:
        assert sizes[0] == sizes[1] == sizes[2], sizes
        assert sizes[0] > 0


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_non_causal_mixers_refuse_the_state_api(name):
    m = build(name, torch.float32)
    with pytest.raises(ZooError, match=r"init_state: .*no causal variant"):
        m.init_state(1)


def test_state_api_bad_inputs_name_the_argument():
    m = build("softmax", torch.float32)
    state = m.init_state(2)
    with torch.no_grad():
        with pytest.raises(ZooError, match=r"x_t: expected shape \(B, 1, D\)"):
            m.step(torch.randn(2, 3, m.dim), state)
        with pytest.raises(ZooError, match=r"x: expected batch 2"):
            m.step(torch.randn(3, 1, m.dim), state)
        with pytest.raises(ZooError, match=r"dtype torch.float32"):
            m.step(torch.randn(2, 1, m.dim, dtype=torch.float64), state)
        with pytest.raises(ZooError, match=r"state: expected a MixerState"):
            m.step(torch.randn(2, 1, m.dim), {"k": None})
        with pytest.raises(ZooError, match=r"mask: expected dtype torch.bool"):
            m.prefill(torch.randn(2, 4, m.dim), state, torch.ones(2, 4))
        with pytest.raises(ZooError, match=r"chunk_size: expected an integer >= 1"):
            m.prefill(torch.randn(2, 4, m.dim), state, chunk_size=0)
        with pytest.raises(ZooError, match=r"batch: expected an integer >= 1"):
            m.init_state(0)
        other = build("transnormer", torch.float32).init_state(2)
        with pytest.raises(ZooError, match=r"state: expected a state made by softmax"):
            m.step(torch.randn(2, 1, m.dim), other)
    assert isinstance(state, MixerState) and state.position == 0  # failed calls consumed nothing


def test_kv_cache_grows_by_an_eighth_and_keeps_its_entries():
    m = build("softmax")
    x = torch.randn(1, 40, m.dim, dtype=torch.float64)
    state = m.init_state(1)
    with torch.no_grad():
        _, state = m.prefill(x[:, :33], state)
        caps = [state.tensors["k"].shape[2]]
        for t in range(33, 40):
            _, state = m.step(x[:, t : t + 1], state)
            caps.append(state.tensors["k"].shape[2])
    assert caps == [33, 37, 37, 37, 37, 41, 41, 41]  # 33 + 33 // 8, then 37 + 37 // 8
    k_ref = m.k_proj(x).reshape(1, 40, m.heads, -1).transpose(1, 2)
    torch.testing.assert_close(state.tensors["k"][:, :, :40], k_ref.detach())


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("longformer", dict(dilation=2, num_global=0)),
        ("longformer", dict(dilation=3, num_global=3, window=2)),
        ("transnormer", dict(urpe=False, variant="t2")),
        ("transnormer_diag", dict(variant="t2")),
        ("performer", dict(chunk_size=3)),
    ],
)
def test_config_variants_equal_causal_forward(name, overrides):
    m = build(name, **overrides)
    x = torch.randn(2, 31, m.dim, dtype=torch.float64)
    mask = torch.ones(2, 31, dtype=torch.bool)
    mask[0, :5] = False
    with torch.no_grad():
        ref = m(x, mask, causal=True)
    y, _ = generate(m, x, mask, 11, 4)
    torch.testing.assert_close(y, ref, **EXACT[torch.float64])


@pytest.mark.parametrize("name", CAUSAL)
def test_snapshot_restore_rolls_a_step_back(name):
    """The profiler times steps at a fixed context by rolling back: a step after a restore must
    equal the same step on a state that never saw the rolled-back token (no in-place updates)."""
    m = build(name)
    x = torch.randn(2, 21, m.dim, dtype=torch.float64)
    a, b = torch.randn(2, 1, m.dim, dtype=torch.float64), torch.randn(2, 1, m.dim, dtype=torch.float64)
    with torch.no_grad():
        _, s1 = m.prefill(x, m.init_state(2), chunk_size=8)
        snap = s1.snapshot()
        m.step(a, s1)
        s1.restore(snap)
        y1, s1 = m.step(b, s1)
        _, s2 = m.prefill(x, m.init_state(2), chunk_size=8)
        y2, s2 = m.step(b, s2)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    assert s1.position == s2.position == 22

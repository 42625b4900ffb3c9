"""The contract every registered mixer must satisfy; skips come from the spec, never from names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tolerances import BF16_REL, FLIP_REL, rel_error, tol
from zoo import ZooError, create_mixer, get_mixer_class, get_spec, list_mixers

MIXERS = list_mixers()


def build(name: str, dtype: torch.dtype = torch.float32, **overrides):
    cfg = get_mixer_class(name).Config.tiny()
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields.update(overrides)
    torch.manual_seed(0)
    return create_mixer(name, dtype=dtype, **fields).eval()


def run(mixer, x, mask=None, **kw):
    """(y, out_mask): out_mask marks real output rows (the pooled mask for length reducers)."""
    return mixer.forward_with_mask(x, mask, **kw)


def test_registry_not_empty():
    assert "softmax" in MIXERS


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [1, 7, 37])
def test_shape_dtype_any_length(name, T):
    m = build(name)
    x = torch.randn(2, T, m.dim)
    y, _ = run(m, x)
    assert y.shape == (2, m.out_len(T), m.dim)
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtypes(name, dtype):
    m = build(name, dtype=dtype)
    assert all(p.dtype == dtype for p in m.parameters())
    x = torch.randn(2, 19, m.dim, dtype=dtype)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1, 11:] = False
    y, out_mask = run(m, x, mask)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    if dtype != torch.bfloat16:  # compare against the fp64 build of the same weights
        ref = build(name, dtype=torch.float64)
        ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
        y64, _ = run(ref, x.double(), mask)
        torch.testing.assert_close(y.double(), y64, **tol(dtype))
    else:  # against the fp32 build of the same (bf16-rounded) weights, at the bf16 tolerance
        ref = build(name, dtype=torch.float32)
        ref.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in m.state_dict().items()})
        y32, _ = run(ref, x.float(), mask)
        bound = FLIP_REL if get_spec(name).precision_sensitive else BF16_REL
        assert rel_error(y, y32) <= bound, f"{name}: bf16 relative error {rel_error(y, y32):.3g} > {bound}"


@pytest.mark.parametrize("name", MIXERS)
def test_gradients_reach_every_parameter(name):
    m = build(name).train()
    x = torch.randn(2, 23, m.dim, requires_grad=True)
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[0, 17:] = False
    y, _ = run(m, x, mask)
    (y.square().sum() + y.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient in {pname}"


@pytest.mark.parametrize("name", MIXERS)
def test_batch_independence(name):
    m = build(name)
    x = torch.randn(3, 21, m.dim)
    mask = torch.ones(3, 21, dtype=torch.bool)
    mask[1, 13:] = False
    y, _ = run(m, x, mask)
    for b in range(3):
        yb, _ = run(m, x[b : b + 1], mask[b : b + 1])
        torch.testing.assert_close(y[b : b + 1], yb, **tol(torch.float32))


@pytest.mark.parametrize("name", MIXERS)
def test_mask_none_equals_all_true(name):
    m = build(name)
    x = torch.randn(2, 17, m.dim)
    y1, _ = run(m, x, None)
    y2, _ = run(m, x, torch.ones(2, 17, dtype=torch.bool))
    torch.testing.assert_close(y1, y2, **tol(torch.float32))


@pytest.mark.parametrize("name", MIXERS)
def test_padded_rows_zero_and_padding_invariance(name):
    spec = get_spec(name)
    m = build(name)
    N, pad = 13, 6
    x = torch.randn(1, N + pad, m.dim)
    mask = torch.zeros(1, N + pad, dtype=torch.bool)
    mask[:, :N] = True
    y, out_mask = run(m, x, mask)
    assert out_mask is not None
    padded_rows = y[~out_mask]
    assert torch.equal(padded_rows, torch.zeros_like(padded_rows)), "padded output rows must be exactly zero"
    if spec.key_padding_mask:
        # C3: the real outputs must not depend on how many pad tokens follow, nor on their values.
        x_junk = x.clone()
        x_junk[:, N:] = 100 * torch.randn(1, pad, m.dim)
        y_junk, _ = run(m, x_junk, mask)
        torch.testing.assert_close(y_junk, y, **tol(torch.float32))
        if not spec.reduces_length:
            y_short, _ = run(m, x[:, :N], None)
            torch.testing.assert_close(y[:, :N], y_short, **tol(torch.float32))


@pytest.mark.parametrize("name", MIXERS)
def test_fully_padded_sequence_gives_zeros(name):
    m = build(name)
    x = torch.randn(2, 15, m.dim)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[0] = False
    x.requires_grad_(True)
    m.train()  # the training path too (stochastic mixers draw there)
    y, _ = run(m, x, mask)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0], torch.zeros_like(y[0]))
    (y.square().sum() + y.sum()).backward()
    assert torch.isfinite(x.grad).all(), f"{name}: non-finite input gradient with a fully padded row"
    assert torch.equal(x.grad[0], torch.zeros_like(x.grad[0])), "a fully padded sequence gets no gradient"
    for pname, p in m.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize("name", MIXERS)
def test_causal_perturbation_or_raises(name):
    m = build(name)
    x = torch.randn(1, 29, m.dim)
    if not get_spec(name).causal:
        with pytest.raises(ValueError, match="causal"):
            run(m, x, causal=True)
        return
    j = 17
    y, _ = run(m, x, causal=True)
    x2 = x.clone()
    x2[:, j:] += torch.randn_like(x2[:, j:])
    y2, _ = run(m, x2, causal=True)
    torch.testing.assert_close(y2[:, :j], y[:, :j], **tol(torch.float32))
    assert not torch.allclose(y2[:, j:], y[:, j:]), "perturbing the future changed nothing at all"


@pytest.mark.parametrize("name", MIXERS)
def test_deterministic_in_eval(name):
    m = build(name)
    x = torch.randn(2, 25, m.dim)
    y1, _ = run(m, x)
    y2, _ = run(m, x)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("name", MIXERS)
def test_unknown_config_key_rejected(name):
    with pytest.raises(ValueError, match="unknown config key 'not_a_field'"):
        create_mixer(name, not_a_field=3)


@pytest.mark.parametrize("name", MIXERS)
def test_bad_inputs_raise_clear_errors(name):
    m = build(name)
    D = m.dim
    cases = [
        (torch.randn(5, D), None, "x"),  # wrong rank
        (torch.randn(2, 5, D + 1), None, "x"),  # wrong width
        (torch.randint(0, 3, (2, 5, D)), None, "x"),  # not floating
        (torch.randn(2, 5, D), torch.ones(2, 4, dtype=torch.bool), "mask"),  # mask shape
        (torch.randn(2, 5, D), torch.ones(2, 5), "mask"),  # mask dtype
    ]
    for x, mask, arg in cases:
        with pytest.raises(ZooError, match=arg):
            run(m, x, mask)


@pytest.mark.parametrize("name", MIXERS)
def test_spec_is_complete(name):
    spec = get_spec(name)
    assert spec.name == name
    assert spec.title and spec.year > 1990
    assert spec.deviations, "say 'none' explicitly when there are no deviations"
    cfg = get_mixer_class(name).Config()
    flops = spec.flops(cfg, 1, 1024)
    assert flops > 0
    assert spec.flops(cfg, 2, 1024) == pytest.approx(2 * flops)
    doc = get_mixer_class(name).__module__
    module = __import__(doc, fromlist=["_"])
    for heading in ("Paper", "Mechanism", "Deviations"):
        assert heading in (module.__doc__ or ""), f"{name}: module docstring lacks '{heading}'"


@pytest.mark.parametrize("name", MIXERS)
def test_forward_documents_its_inputs(name):
    """``help(mixer.forward)`` names mask, causal and every extra input the spec declares."""
    import inspect

    cls = get_mixer_class(name)
    doc = inspect.getdoc(cls.forward) or ""
    params = inspect.signature(cls.forward).parameters
    for arg in ("mask", "causal", *get_spec(name).extra_inputs):
        assert arg in doc, f"{name}: forward's docstring does not mention {arg!r}"
    for arg in get_spec(name).extra_inputs:
        assert arg in params and params[arg].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {arg} not a keyword"
    if get_spec(name).reduces_length:
        assert "out_len" in doc and "forward_with_mask" in doc

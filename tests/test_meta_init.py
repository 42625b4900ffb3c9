"""Meta-device construction, ``to_empty`` and ``reset_parameters()`` over the registry (FSDP-style init).

``create_mixer(..., device="meta")`` allocates nothing; ``to_empty(device=...)`` gives uninitialised
memory; ``reset_parameters()`` must then initialise every parameter and buffer: the forward is finite,
the state equals a normally built mixer's ``reset_parameters()`` under the same seed (so nothing is
left to ``to_empty``'s garbage), and has the statistics of a normal construction.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.test_contract import run
from tests.tolerances import tol
from zoo import create_mixer, get_mixer_class, list_mixers

MIXERS = list_mixers()


def tiny_fields(name: str) -> dict:
    cfg = get_mixer_class(name).Config.tiny()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and every buffer (persistent or not)."""
    return {**dict(m.named_parameters()), **{f"buffer:{k}": b for k, b in m.named_buffers()}}


def from_meta(name: str) -> torch.nn.Module:
    m = create_mixer(name, device="meta", **tiny_fields(name))
    assert all(t.device.type == "meta" for t in state(m).values()), "meta construction allocated memory"
    m = m.to_empty(device="cpu")
    with torch.no_grad():  # what to_empty may leave behind, made explicit
        for t in state(m).values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    return m


@pytest.mark.parametrize("name", MIXERS)
def test_meta_to_empty_reset_gives_a_working_mixer(name):
    m = from_meta(name)
    m.reset_parameters()
    for key, t in state(m).items():
        assert torch.isfinite(t).all(), f"{name}: {key} not initialised by reset_parameters()"
    x = torch.randn(2, 19, m.dim)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1, 12:] = False
    for mode in (m.eval(), m.train()):
        y, _ = run(mode, x, mask)
        assert torch.isfinite(y).all(), f"{name}: non-finite forward after meta -> to_empty -> reset"


@pytest.mark.parametrize("name", MIXERS)
def test_reset_parameters_covers_all_state(name):
    """Same seed before reset: the meta-built mixer equals the normally built one, outputs included."""
    torch.manual_seed(0)
    normal = create_mixer(name, **tiny_fields(name))
    torch.manual_seed(1)
    normal.reset_parameters()
    meta = from_meta(name)
    torch.manual_seed(1)
    meta.reset_parameters()
    a, b = state(normal), state(meta)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{name}: {key} differs after reset_parameters()"
    x = torch.randn(2, 23, normal.dim)
    for train in (False, True):  # the training path draws from the module's generators
        y1, _ = run(normal.train(train), x)
        y2, _ = run(meta.train(train), x)
        torch.testing.assert_close(y1, y2, **tol(torch.float32))


@pytest.mark.parametrize("name", MIXERS)
def test_reset_parameters_has_construction_statistics(name):
    torch.manual_seed(0)
    normal = create_mixer(name, **tiny_fields(name))
    torch.manual_seed(2)
    meta = from_meta(name)
    meta.reset_parameters()
    b = state(meta)
    for key, t in state(normal).items():
        if not t.is_floating_point() or t.numel() < 2:
            continue
        u, v = t.detach().double().flatten(), b[key].detach().double().flatten()
        s = float(u.std())
        if s == 0:  # a constant init (zeros, ones, 1/kernel) must be reproduced exactly
            assert torch.equal(u, v), f"{name}: {key}: constant init not reproduced"
            continue
        n = t.numel()  # bounds of about 4 standard errors of two independent draws of n values
        assert abs(float(v.std()) - s) <= max(0.3, 4 * n**-0.5) * s, f"{name}: {key}: std {float(v.std()):.3g} vs {s:.3g}"
        assert abs(float(v.mean()) - float(u.mean())) <= 4 * s * (2 / n) ** 0.5, f"{name}: {key}: mean differs"


def test_transnormer_buffer_is_initialised():
    """The issue's case: householder_u stayed uninitialised memory (NaN output) after to_empty."""
    m = from_meta("transnormer")
    assert torch.isnan(m.householder_u).all()
    m.reset_parameters()
    ref = create_mixer("transnormer", **tiny_fields("transnormer"))
    torch.testing.assert_close(m.householder_u, ref.householder_u, rtol=0, atol=0)
    torch.testing.assert_close(m.theta, ref.theta, rtol=0, atol=0)

"""Dropout: ``attention_dropout`` on mixers with attention weights and ``Encoder(dropout=, attention_dropout=)``.

Over the registry (every mixer whose config has ``attention_dropout``): eval is deterministic and
ignores the field; training with p > 0 changes the output; p = 0 (the default) equals a mixer built
without the field given.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.test_contract import build, run
from zoo import ZooValueError, create_mixer, get_mixer_class, list_mixers
from zoo.models import Encoder

WITH_FIELD = [n for n in list_mixers() if "attention_dropout" in {f.name for f in dataclasses.fields(get_mixer_class(n).Config)}]


def test_mixers_with_attention_weights_have_the_field():
    attention_weights = {"softmax", "linformer", "bigbird", "pyramidion", "pyramidion_block", "longformer",
                         "poolingformer", "nystrom", "skeinformer", "transnormer_diag"}
    assert attention_weights <= set(WITH_FIELD)


@pytest.mark.parametrize("name", WITH_FIELD)
def test_attention_dropout(name):
    x = torch.randn(2, 37, build(name).dim)
    plain = build(name)  # attention_dropout not given: 0
    dropped = build(name, attention_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    y0, _ = run(plain, x)
    y_eval1, _ = run(dropped.eval(), x)
    y_eval2, _ = run(dropped.eval(), x)
    torch.testing.assert_close(y_eval1, y0, rtol=0, atol=0)  # eval never drops
    assert torch.equal(y_eval1, y_eval2)
    torch.manual_seed(3)
    zero = build(name, attention_dropout=0.0).train()
    zero.load_state_dict(plain.state_dict())
    torch.manual_seed(4)
    y_zero, _ = run(zero, x)
    torch.manual_seed(4)
    y_plain_train, _ = run(plain.train(), x)
    torch.testing.assert_close(y_zero, y_plain_train, rtol=0, atol=0)  # p = 0 is today's mixer
    torch.manual_seed(4)
    y_drop, _ = run(dropped.train(), x)
    assert torch.isfinite(y_drop).all()
    assert not torch.allclose(y_drop, y_plain_train), f"{name}: attention_dropout=0.5 changed nothing in training"


@pytest.mark.parametrize("name", WITH_FIELD)
def test_attention_dropout_gradients_and_padding(name):
    """Training with p > 0 and padding: padded rows stay zero and the backward is the gradient of
    the forward under the same masks (fp64 gradcheck; the masks are fixed by reseeding per call)."""
    m = build(name, torch.float64, attention_dropout=0.3).train()
    T = 11
    x = torch.randn(2, T, m.dim, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, -3:] = False

    def forward(x):
        torch.manual_seed(5)  # torch's dropout masks
        if hasattr(m, "reseed"):
            m.reseed(5)  # the module's own draws (skeinformer's masks come from them)
        return run(m, x, mask)

    y, out_mask = forward(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[~out_mask], torch.zeros_like(y[~out_mask])), f"{name}: padded rows moved under dropout"
    torch.testing.assert_close(forward(x)[0], y, rtol=0, atol=0)  # reseeding fixes the masks
    assert torch.autograd.gradcheck(lambda x: forward(x)[0], (x,), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", WITH_FIELD)
def test_attention_dropout_keeps_forward_device_side(name):
    """Dropout adds no host read (eager) and no graph break (fullgraph compile, forward + backward)."""
    from tests.test_compile import GRAPH_BREAKS, HostReads, call, inputs

    m = build(name, attention_dropout=0.3).train()
    x, mask = inputs(m, "mask")
    if (name, "mask") not in GRAPH_BREAKS:
        with HostReads() as reads:
            call(m, x, mask)
        assert reads.count == 0, f"{name}: {reads.count} host reads with attention dropout"
    torch._dynamo.reset()
    try:
        fn = torch.compile(lambda x, mask: call(m, x, mask), backend="aot_eager", fullgraph=(name, "mask") not in GRAPH_BREAKS)
        y = fn(x.requires_grad_(True), mask)
        y.sum().backward()
    finally:
        torch._dynamo.reset()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("p", [-0.1, 1.0, "0.1", True])
def test_attention_dropout_rejects_bad_values(p):
    with pytest.raises(ZooValueError, match="attention_dropout: expected a probability in \\[0, 1\\)"):
        create_mixer("softmax", attention_dropout=p)


TINY = dict(depth=2, dim=16, heads=2, vocab=50, classes=3, ffn=32, max_len=64)


def test_encoder_dropout_train_vs_eval():
    tokens = torch.randint(0, 50, (2, 20))
    torch.manual_seed(0)
    base = Encoder(mixer="softmax", **TINY)
    torch.manual_seed(0)
    model = Encoder(mixer="softmax", dropout=0.3, attention_dropout=0.2, **TINY)
    assert all(b.mixer.config.attention_dropout == 0.2 for b in model.blocks)
    torch.testing.assert_close(model.eval()(tokens), base.eval()(tokens), rtol=0, atol=0)
    assert torch.equal(model.eval()(tokens), model.eval()(tokens))
    torch.manual_seed(1)
    a = model.train()(tokens)
    torch.manual_seed(1)
    b = base.train()(tokens)
    assert not torch.allclose(a, b)
    torch.manual_seed(1)
    torch.testing.assert_close(base.train()(tokens), b, rtol=0, atol=0)  # p = 0: deterministic, as before


def test_encoder_attention_dropout_only_where_the_mixer_has_it():
    model = Encoder(mixer="fnet", attention_dropout=0.1, **TINY)  # no attention weights: not applied
    assert model.attention_dropout_applied is False
    assert Encoder(mixer="softmax", attention_dropout=0.1, **TINY).attention_dropout_applied is True
    with pytest.raises(ZooValueError, match="dropout"):
        Encoder(mixer="softmax", dropout=1.5, **TINY)
    with pytest.raises(ZooValueError, match="attention_dropout"):
        Encoder(mixer="softmax", attention_dropout=0.1, mixer_overrides={"attention_dropout": 0.2}, **TINY)

"""zoo.models.Encoder: shapes, loss and gradients, padding, length-reducing mixers, errors."""

from __future__ import annotations

import pytest
import torch

from zoo import list_mixers
from zoo.errors import ZooTypeError, ZooValueError
from zoo.models import Encoder

TINY = dict(depth=2, dim=16, heads=2, vocab=50, classes=3, ffn=32, max_len=64)


def test_forward_loss_and_gradients():
    model = Encoder(mixer="softmax", **TINY)
    tokens = torch.randint(0, 50, (2, 12))
    labels = torch.tensor([0, 2])
    logits = model(tokens)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    loss = model.loss(tokens, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("position_embedding"):
            assert p.grad is not None and p.grad[:12].abs().sum() > 0 and p.grad[12:].abs().sum() == 0
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(model.blocks) == 2 and model.blocks[0].mixer.spec.name == "softmax"


def test_mixer_overrides_reach_the_mixer():
    model = Encoder(mixer="softmax", mixer_overrides={"impl": "eager"}, **TINY)
    assert all(block.mixer.config.impl == "eager" for block in model.blocks)
    with pytest.raises(ZooValueError, match="unknown config key"):
        Encoder(mixer="softmax", mixer_overrides={"imp": "eager"}, **TINY)
    with pytest.raises(ZooValueError, match="heads"):
        Encoder(mixer="softmax", mixer_overrides={"heads": 4}, **TINY)


def test_padding_does_not_change_logits():
    """Padded tokens (mask False) can hold anything: the logits of the sequence stay the same."""
    torch.manual_seed(0)
    model = Encoder(mixer="softmax", **TINY).double().eval()
    tokens = torch.randint(0, 50, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[:, 7:] = False
    other = tokens.clone()
    other[:, 7:] = (other[:, 7:] + 13) % 50
    torch.testing.assert_close(model(tokens, mask), model(other, mask))
    short = model(tokens[:, :7])  # the same real tokens, no padding at all
    torch.testing.assert_close(model(tokens, mask), short)


@pytest.mark.parametrize("name", list_mixers(reduces_length=True))
def test_length_reducing_mixer(name):
    model = Encoder(mixer=name, **TINY)
    T = 40
    lengths = model.lengths(T)
    assert lengths[0] == T and lengths[1] == model.blocks[0].mixer.out_len(T) < T
    tokens = torch.randint(0, 50, (2, T))
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 30:] = False
    loss = model.loss(tokens, torch.tensor([0, 1]), mask)
    loss.backward()
    assert torch.isfinite(loss)


def test_errors_and_meta_device():
    model = Encoder(mixer="softmax", **TINY)
    with pytest.raises(ZooValueError, match="max_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ZooTypeError, match="int64"):
        model(torch.zeros(1, 8))
    with pytest.raises(ZooValueError, match="mask"):
        model(torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ZooValueError, match="depth"):
        Encoder(mixer="softmax", **{**TINY, "depth": 0})
    with pytest.raises(ZooValueError, match="Did you mean"):
        Encoder(mixer="sofmax", **TINY)
    meta = Encoder(mixer="softmax", **TINY, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_ponet_table2_preset_is_the_papers_lra_text_config(monkeypatch, tmp_path):
    """lxchtan/PoNet examples/LRA/code/lra_config.py, task "text": 2 layers, d=64, 2 heads of 32,
    FFN 128, vocab 512, learned positions, mean pooling, dropout 0.1, attention dropout 0.1, B=32."""
    from profiler.settings import plan_profile

    cells, _ = plan_profile(preset="ponet-table2", lengths="512", out=tmp_path / "t2.jsonl")
    assert {c.mixer for c in cells} == {"softmax", "performer", "nystrom", "fnet", "ponet"}
    for c in cells:
        assert (c.scope, c.mode, c.batch, c.dim, c.heads, c.depth) == ("model", "train", 32, 64, 2, 2)
        assert c.model == {"vocab": 512, "classes": 2, "ffn": 128, "dropout": 0.1}
        if c.mixer == "softmax":
            assert c.config["attention_dropout"] == 0.1 and c.config["impl"] == "eager"
    # what the profiler builds from such a cell: dropout everywhere the LRA code has it
    model = Encoder(mixer="softmax", depth=2, dim=64, heads=2, vocab=512, classes=2, ffn=128, max_len=512,
                    mixer_overrides={"impl": "eager", "attention_dropout": 0.1}, dropout=0.1)
    assert model.attention_dropout_applied and model.embedding_dropout.p == 0.1
    assert all(b.dropout.p == 0.1 and b.ffn[2].p == 0.1 and b.ffn[4].p == 0.1 for b in model.blocks)
    assert model.position_embedding.num_embeddings == 512  # learned positions


def test_token_shift_is_off_by_default_and_adds_the_previous_token():
    """Off: the profiler's model is unchanged (no extra parameters). On: e_t + W e_{t-1}, zero before
    the first token and where the previous token is padding."""
    plain = Encoder(mixer="softmax", **TINY)
    assert plain.token_shift is None and not any("token_shift" in n for n, _ in plain.named_parameters())
    torch.manual_seed(0)
    model = Encoder(mixer="softmax", token_shift=True, **TINY).double()
    e = torch.randn(2, 5, 16, dtype=torch.double)
    mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
    prev = model._previous(e, mask)
    torch.testing.assert_close(prev[0, 1:], e[0, :-1])
    assert prev[0, 0].abs().sum() == 0
    assert prev[1, :3].abs().sum() == 0 and torch.equal(prev[1, 3:], e[1, 2:4])  # left padding never read
    with pytest.raises(ZooTypeError, match="token_shift"):
        Encoder(mixer="softmax", token_shift=1, **TINY)


def test_token_shift_is_causal():
    """With a causal mixer and the per-token head, logits at t depend on tokens <= t only, and the
    shift does reach t from t-1 (through W, not only through the mixer)."""
    torch.manual_seed(0)
    model = Encoder(mixer="softmax", token_shift=True, head="token", **TINY).double().eval()
    tokens = torch.randint(1, 50, (1, 12))
    later = tokens.clone()
    later[:, 7:] = (later[:, 7:] + 5) % 50
    torch.testing.assert_close(model(tokens, causal=True)[:, :7], model(later, causal=True)[:, :7])
    e = model.token_embedding(tokens)
    earlier = tokens.clone()
    earlier[:, 3] = (earlier[:, 3] + 5) % 50
    shifted = e + model.token_shift(model._previous(e, None))
    other = model.token_embedding(earlier)
    other = other + model.token_shift(model._previous(other, None))
    changed = (shifted - other).abs().sum(-1)[0] > 0  # (T,)
    assert changed.tolist() == [t in (3, 4) for t in range(12)]


@pytest.mark.parametrize("shift", [False, True])
def test_padding_does_not_change_logits_with_or_without_token_shift(shift):
    torch.manual_seed(0)
    model = Encoder(mixer="softmax", token_shift=shift, **TINY).double().eval()
    tokens = torch.randint(0, 50, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[:, 7:] = False
    other = tokens.clone()
    other[:, 7:] = (other[:, 7:] + 13) % 50
    torch.testing.assert_close(model(tokens, mask), model(other, mask))
    torch.testing.assert_close(model(tokens, mask), model(tokens[:, :7]))

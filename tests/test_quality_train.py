"""The training loop and the per-token head: a tiny task is learned, runs are reproducible,
a NaN loss is a status, the lr schedule warms up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from profiler.quality.tasks import make_task
from profiler.quality.train import TrainConfig, lr_factor, train_run
from zoo import list_mixers
from zoo.errors import ZooValueError
from zoo.models import Encoder

TINY = TrainConfig(depth=1, dim=32, heads=2, ffn=64, batch=32, steps=80)


def _splits(name, T, sizes=(2000, 200, 200), **settings):
    task = make_task(name, **settings)
    return task, {k: task.generate(n, T, np.random.default_rng(i)) for i, (k, n) in enumerate(zip(("train", "val", "test"), sizes))}


def test_a_tiny_task_is_learned():
    task, splits = _splits("ends", 8, symbols=2)
    result = train_run(task, splits, "softmax", {}, 8, TINY, 3e-3, 0)
    assert result["status"] == "ok" and result["steps"] == 80
    assert result["test_acc"] >= 0.95, result  # chance is 0.25
    assert result["tokens_seen"] == 80 * 32 * 8 and result["tokens_per_s"] > 0


def test_same_seed_same_numbers_other_seed_differs():
    task, splits = _splits("selective_copy", 12, sizes=(300, 50, 50), num_copy=2, num_data=4)
    cfg = TrainConfig(depth=1, dim=16, heads=2, ffn=32, batch=8, steps=15)
    a = train_run(task, splits, "softmax", {}, 12, cfg, 3e-3, 1)
    b = train_run(task, splits, "softmax", {}, 12, cfg, 3e-3, 1)
    c = train_run(task, splits, "softmax", {}, 12, cfg, 3e-3, 2)
    for key in ("train_loss", "val_loss", "test_loss", "test_acc", "final_train_loss"):
        assert a[key] == b[key], key
    assert a["final_train_loss"] != c["final_train_loss"]


def test_nan_loss_is_the_diverged_status(monkeypatch):
    task, splits = _splits("ends", 8, sizes=(64, 16, 16), symbols=2)
    monkeypatch.setattr(Encoder, "loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    result = train_run(task, splits, "softmax", {}, 8, TINY, 3e-3, 0)
    assert result["status"] == "diverged" and "non-finite" in result["reason"] and result["steps"] == 0
    assert "test_acc" not in result


def test_wall_clock_budget_stops_training():
    task, splits = _splits("ends", 8, sizes=(64, 16, 16), symbols=2)
    cfg = TrainConfig(depth=1, dim=16, heads=2, ffn=32, batch=8, steps=None, seconds=0.5)
    result = train_run(task, splits, "softmax", {}, 8, cfg, 3e-3, 0)
    assert result["status"] == "ok" and result["steps"] >= 1 and 0.5 <= result["train_time_s"] < 5


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10])) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] >= 0.1


def test_token_head_shapes_and_loss_ignores_unscored():
    model = Encoder(mixer="softmax", depth=1, dim=16, heads=2, vocab=10, classes=5, ffn=32, max_len=12, head="token")
    tokens = torch.randint(0, 10, (3, 12))
    logits = model(tokens)
    assert logits.shape == (3, 12, 5)
    labels = torch.full((3, 12), -100)
    labels[:, 4] = torch.tensor([0, 1, 2])
    expected = torch.nn.functional.cross_entropy(logits[:, 4], labels[:, 4])
    torch.testing.assert_close(model.loss(tokens, labels), expected)


def test_token_head_refuses_length_reducing_mixers():
    reducing = list_mixers(reduces_length=True)
    assert reducing, "the registry has no length-reducing mixer to check"
    for name in reducing:
        with pytest.raises(ZooValueError, match="head: 'token' needs one output per token"):
            Encoder(mixer=name, depth=1, dim=16, heads=2, vocab=10, classes=5, ffn=32, max_len=64, head="token")
    with pytest.raises(ZooValueError, match="head: expected 'pool' or 'token'"):
        Encoder(mixer="softmax", head="tokens")


def test_mqar_with_token_shift_recalls_and_leaks_no_label():
    """The token shift lets one bidirectional softmax layer do MQAR's lookup; blanking the values
    in the context (the only place the answers are) puts the same model at chance: no label
    reaches the input through the shift or the generator."""
    settings = dict(num_kv=2, num_keys=8, num_values=8)
    task, splits = _splits("mqar", 12, sizes=(2000, 200, 200), **settings)
    cfg = TrainConfig(depth=1, dim=32, heads=2, ffn=64, token_shift=True, batch=32, steps=300)
    recall = train_run(task, splits, "softmax", {}, 12, cfg, 3e-3, 0)
    assert recall["test_acc"] >= 0.9, recall  # "one of the two values in context" alone tops out near 0.56
    blanked = {}
    for name, split in splits.items():
        tokens = split.tokens.copy()
        tokens[:, 1:4:2] = 0  # v1, v2 -> blank
        blanked[name] = type(split)(tokens, split.mask, split.labels)
    blind = train_run(task, blanked, "softmax", {}, 12, cfg, 3e-3, 0)
    assert blind["test_acc"] <= 0.2, blind  # chance is 1/8

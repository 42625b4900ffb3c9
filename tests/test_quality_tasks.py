"""Quality task generators: labels on hand-checked structure, no answer leakage, chance levels,
determinism per seed, lengths a task cannot generate."""

from __future__ import annotations

import numpy as np
import pytest

from profiler.quality.tasks import IGNORE, LISTOPS_VOCAB, ListOps, listops_value, make_task, task_names
from zoo.errors import ZooValueError

ID_TO_LISTOPS = {v: k for k, v in LISTOPS_VOCAB.items()}


def _gen(name, n=64, T=64, seed=0, **settings):
    return make_task(name, **settings).generate(n, T, np.random.default_rng(seed))


def test_mqar_labels_are_the_values_bound_in_the_context():
    task = make_task("mqar", num_kv=4, num_keys=8, num_values=8)
    s = task.generate(50, 40, np.random.default_rng(1))
    for tokens, labels in zip(s.tokens, s.labels):
        context = {int(tokens[2 * i]): int(tokens[2 * i + 1]) for i in range(4)}
        assert len(context) == 4 and all(1 <= k <= 8 for k in context) and all(9 <= v <= 16 for v in context.values())
        scored = np.flatnonzero(labels != IGNORE)
        assert len(scored) == 4 and (scored >= 8).all()  # one query per key, after the context
        assert sorted(int(tokens[p]) for p in scored) == sorted(context)
        for p in scored:
            assert 1 + 8 + labels[p] == context[int(tokens[p])]


def test_mqar_answer_never_at_or_after_its_query():
    """A bidirectional mixer sees the whole input: the answer token must not be there to copy."""
    task = make_task("mqar")
    s = task.generate(200, 128, np.random.default_rng(2))
    K = task.num_kv
    assert not (s.tokens[:, 2 * K:] > task.num_keys).any()  # no value token outside the context
    for tokens, labels in zip(s.tokens, s.labels):
        for p in np.flatnonzero(labels != IGNORE):
            answer = 1 + task.num_keys + labels[p]
            assert answer not in tokens[p:]


def test_mqar_query_gaps_follow_a_power_law():
    task = make_task("mqar", num_kv=4)
    s = task.generate(2000, 8 + 200, np.random.default_rng(3))
    slots = np.nonzero(s.labels != IGNORE)[1] - 8  # (n*K,) query slot
    first, second = (slots < 100).sum(), (slots >= 100).sum()
    assert first > 1.5 * second  # most queries come soon after the context
    assert second > 0  # ... but not all


def test_selective_copy_labels_are_the_data_in_order():
    task = make_task("selective_copy", num_copy=3, num_data=5)
    s = task.generate(40, 12, np.random.default_rng(4))
    for tokens, labels in zip(s.tokens, s.labels):
        data = tokens[:9][tokens[:9] >= 2] - 2
        assert len(data) == 3
        np.testing.assert_array_equal(labels[9:], data)
        assert (labels[:9] == IGNORE).all()
        assert (tokens[9:] == 1).all()  # only copy markers where the answers go


def _eval_listops(ids):
    """Independent evaluator over token ids (a stack machine)."""
    stack = [[]]
    ops = []
    for t in ids:
        tok = ID_TO_LISTOPS[int(t)]
        if tok.startswith("["):
            ops.append(tok)
            stack.append([])
        elif tok == "]":
            args = stack.pop()
            stack[-1].append(listops_value(ops.pop(), args))
        else:
            stack[-1].append(int(tok))
    assert len(stack) == 1 and len(stack[0]) == 1
    return stack[0][0]


def test_listops_operators_on_hand_made_cases():
    assert listops_value("[MAX", [2, 9, 4]) == 9
    assert listops_value("[MIN", [2, 9, 4]) == 2
    assert listops_value("[MED", [1, 2, 3, 4]) == 2  # median 2.5, truncated as in LRA
    assert listops_value("[MED", [7, 1, 5]) == 5
    assert listops_value("[SM", [9, 8, 5]) == 2
    ids = [LISTOPS_VOCAB[t] for t in "[MAX 2 [MIN 4 7 ] 0 ]".split()]
    assert _eval_listops(ids) == 4


def test_listops_labels_lengths_and_padding():
    for T in (4, 16, 200):
        s = _gen("listops", n=100, T=T, seed=T)
        for tokens, mask, label in zip(s.tokens, s.mask, s.labels):
            n = int(mask.sum())
            assert 4 <= n <= T and mask[:n].all() and not mask[n:].any() and (tokens[n:] == 0).all()
            assert _eval_listops(tokens[:n]) == label
    short, long = _gen("listops", n=200, T=64).mask.sum(1).mean(), _gen("listops", n=200, T=512).mask.sum(1).mean()
    assert long > 3 * short  # lengths grow with the requested T


def test_ends_label_depends_only_on_the_two_ends():
    task = make_task("ends", symbols=3)
    s = task.generate(100, 50, np.random.default_rng(5))
    np.testing.assert_array_equal(s.labels, (s.tokens[:, 0] - 1) * 3 + (s.tokens[:, -1] - 1))
    assert set(np.unique(s.tokens[:, 1:-1])) == {1, 2, 3}  # the middle is the same alphabet


def test_chance_levels():
    assert make_task("mqar", num_values=32).chance(np.zeros(5, dtype=int)) == 1 / 32
    assert make_task("selective_copy", num_data=16).chance(np.zeros(5, dtype=int)) == 1 / 16
    assert make_task("ends", symbols=4).chance(np.zeros(5, dtype=int)) == 1 / 16
    assert ListOps().chance(np.array([3, 3, 3, 1])) == 0.75  # the majority class, not 1/10


@pytest.mark.parametrize("name", task_names())
def test_deterministic_per_seed(name):
    a, b, c = _gen(name, seed=7), _gen(name, seed=7), _gen(name, seed=8)
    for x, y in ((a.tokens, b.tokens), (a.labels, b.labels), (a.mask, b.mask)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("name", task_names())
def test_too_short_lengths_raise(name):
    task = make_task(name)
    with pytest.raises(ZooValueError, match=f"lengths: task '{name}'.*needs T >= {task.min_length()}"):
        task.generate(2, task.min_length() - 1, np.random.default_rng(0))
    task.generate(2, task.min_length(), np.random.default_rng(0))


def test_unknown_task_and_setting():
    with pytest.raises(ZooValueError, match="Did you mean 'mqar'"):
        make_task("mqr")
    with pytest.raises(ZooValueError, match="unknown setting 'num_pairs'"):
        make_task("mqar", num_pairs=3)
    with pytest.raises(ZooValueError, match="num_kv: expected an integer >= 1"):
        make_task("mqar", num_kv=0)

"""BigBird vs a dense oracle with its explicit block mask (MIXERS.md 9.4), and its random pattern."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import tol
from zoo import ZooError, create_mixer
from zoo.mixers.bigbird import sample_random_blocks
from zoo.reference.bigbird import bigbird_reference

F64 = tol(torch.float64)


def make(**overrides):
    torch.manual_seed(0)
    fields = dict(dim=16, heads=2, block_size=2, num_random_blocks=1)
    fields.update(overrides)
    return create_mixer("bigbird", dtype=torch.float64, **fields).eval()


def padded_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


def pattern(m, mask: torch.Tensor) -> torch.Tensor:
    return m.random_blocks(m.num_blocks(mask), -(-mask.shape[1] // m.config.block_size))


@pytest.mark.parametrize("block,r,T", [(2, 1, 37), (3, 2, 40), (2, 0, 24), (4, 1, 33)])
def test_eval_matches_dense_oracle(block, r, T):
    m = make(block_size=block, num_random_blocks=r)
    lengths = [T, T - 9, 9, 0]  # long, long with padding, short (full attention), empty
    x = torch.randn(4, T, 16, dtype=torch.float64)
    mask = padded_mask(4, T, lengths)
    mask[0, 5] = False  # a hole
    y = m(x, mask)
    torch.testing.assert_close(y, bigbird_reference(m, x, mask, pattern(m, mask)), **F64)


def test_training_pattern_matches_oracle_with_gradients():
    m = make(num_random_blocks=2).train()
    T = 38
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    mask = padded_mask(2, T, [T, 31])
    state = m.draw_state.clone()
    y = m(x, mask)
    m.draw_state.copy_(state)
    rand = pattern(m, mask)  # the draws forward made
    ref = bigbird_reference(m, x, mask, rand)
    torch.testing.assert_close(y, ref, **F64)
    g = torch.randn_like(y)
    params = [x] + list(m.parameters())
    for a, b in zip(torch.autograd.grad((y * g).sum(), params), torch.autograd.grad((ref * g).sum(), params)):
        torch.testing.assert_close(a, b, **F64)


def test_training_draws_fresh_patterns_eval_is_fixed():
    m = make()
    x = torch.randn(1, 40, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    fixed = m(x)
    m.train()
    y1, y2 = m(x), m(x)
    assert not torch.equal(y1, y2), "training calls should draw new random blocks"
    m2 = make(resample_in_train=False)
    m2.load_state_dict(m.state_dict())
    m2.train()
    torch.testing.assert_close(m2(x), fixed, rtol=0, atol=0)


def test_short_sequences_equal_full_softmax():
    m = make(block_size=4, num_random_blocks=1)  # full attention up to 7 blocks = 28 tokens
    sm = create_mixer("softmax", dim=16, heads=2, dtype=torch.float64)
    sm.load_state_dict(m.state_dict())
    x = torch.randn(2, 28, 16, dtype=torch.float64)
    mask = padded_mask(2, 28, [28, 17])
    torch.testing.assert_close(m(x, mask), sm(x, mask), **F64)


def test_global_blocks_are_full_rows():
    m = make(block_size=3)
    sm = create_mixer("softmax", dim=16, heads=2, dtype=torch.float64)
    sm.load_state_dict(m.state_dict())
    T, N = 50, 44  # 15 blocks of real tokens: global query blocks 0 and 14 (positions 42..44)
    x = torch.randn(1, T, 16, dtype=torch.float64)
    mask = padded_mask(1, T, [N])
    y, ref = m(x, mask), sm(x, mask)
    torch.testing.assert_close(y[:, :3], ref[:, :3], **F64)
    torch.testing.assert_close(y[:, 42:44], ref[:, 42:44], **F64)
    assert not torch.allclose(y[:, 3:42], ref[:, 3:42]), "middle blocks should be sparse"


def test_padding_invariance_in_sparse_mode():
    m = make()
    x = torch.randn(1, 45, 16, dtype=torch.float64)
    mask = padded_mask(1, 45, [33])
    torch.testing.assert_close(m(x, mask)[:, :33], m(x[:, :33]), **F64)


@pytest.mark.parametrize("n,r", [(8, 3), (11, 3), (9, 4), (30, 1), (6, 1)])
def test_random_blocks_are_distinct_and_outside_window_and_globals(n, r):
    gen = torch.Generator().manual_seed(1)
    seen = [set() for _ in range(n)]
    for _ in range(60):
        rb = sample_random_blocks(n, r, 8, gen)  # (H, n, r)
        assert torch.all(rb[:, [0, n - 1]] == -1)
        for h in range(8):
            for j in range(1, n - 1):
                picks = rb[h, j].tolist()
                assert len(set(picks)) == r
                assert all(0 <= t < n for t in picks)
                assert not set(picks) & {0, j - 1, j, j + 1, n - 1}
                seen[j].update(picks)
    for j in range(1, n - 1):  # every allowed block gets drawn eventually
        assert seen[j] == set(range(n)) - {0, j - 1, j, j + 1, n - 1}


def test_bad_config_rejected():
    with pytest.raises(ZooError, match="block_size"):
        create_mixer("bigbird", dim=16, heads=2, block_size=0)
    with pytest.raises(ZooError, match="num_random_blocks"):
        create_mixer("bigbird", dim=16, heads=2, num_random_blocks=-1)

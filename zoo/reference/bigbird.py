"""BigBird oracle: dense attention under the explicit (T x T) ITC block mask.

The random blocks come from the mixer (``random_blocks``), everything else is rebuilt here from
the rules with plain loops. Slow on purpose; never profiled.
"""

from __future__ import annotations

import torch

from zoo.functional import merge_heads, split_heads
from zoo.reference.dense import dense_attention


def bigbird_block_sets(n: int, r_blocks: torch.Tensor, full_blocks: int) -> list[set[int]]:
    """Key blocks of each query block for a sequence of n blocks; r_blocks (n, r) random ids (-1 = none)."""
    if n <= full_blocks:
        return [set(range(n)) for _ in range(n)]
    sets = []
    for j in range(n):
        if j in (0, n - 1):
            sets.append(set(range(n)))
            continue
        keys = {j - 1, j, j + 1, 0, n - 1}
        randoms = [int(t) for t in r_blocks[j] if t >= 0]
        assert len(set(randoms)) == len(randoms), "duplicate random block"
        assert not keys & set(randoms), "a random block repeats a window or global block"
        sets.append(keys | set(randoms))
    return sets


def bigbird_allowed(mask: torch.Tensor, rand: torch.Tensor, block: int, full_blocks: int) -> torch.Tensor:
    """(B, H, T, T) bool: query i may see key j. mask (B, T); rand (B, H, >= n, r) random block ids."""
    B, T = mask.shape
    H = rand.shape[1]
    allowed = torch.zeros(B, H, T, T, dtype=torch.bool)
    for b in range(B):
        real = mask[b].nonzero().flatten()
        if real.numel() == 0:
            continue
        n = -(-(int(real.max()) + 1) // block)  # blocks up to the last real token
        for h in range(H):
            for j, keys in enumerate(bigbird_block_sets(n, rand[b, h], full_blocks)):
                for kb in keys:
                    allowed[b, h, j * block : (j + 1) * block, kb * block : (kb + 1) * block] = True
    return allowed & mask[:, None, None, :]


def bigbird_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None, rand: torch.Tensor) -> torch.Tensor:
    """The mixer's output computed densely from its modules, with the random blocks ``rand``."""
    c = mixer.config
    B, T, _ = x.shape
    m = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    allowed = bigbird_allowed(m, rand, c.block_size, c.full_attention_blocks)
    q, k, v = (split_heads(p(x), c.heads) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    o = dense_attention(q, k, v, allowed)  # (B, H, T, P)
    y = mixer.out_proj(merge_heads(o))
    return y * m[..., None].to(y.dtype)

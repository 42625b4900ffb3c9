"""Slow, obvious oracles for Pyramidion: per-sequence successive halving and dense block attention.

Loops over the batch, the rounds and the pairs in Python, one sequence at a time (MIXERS.md 5.4),
with the zoo's padding rules written out: the sequence is padded with masked zero tokens to
k * 2^R; a masked token ranks after every real one and loses its pair with weight 0.
"""

from __future__ import annotations

import math

import torch

from zoo.reference.dense import dense_attention


def halving_topk_loop(
    x: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    mask: torch.Tensor | None = None,
    base: float = 20.0,
    flip: bool = True,
    sort_back: bool = False,
    hard: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, L, D), scores (B, L), mask (B, L) -> (pooled (B, k, D), scores (B, k), mask (B, k))."""
    B, L, D = x.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool)
    rounds = 0
    while k * 2**rounds < L:
        rounds += 1
    n = k * 2**rounds
    outs, out_scores, out_masks = [], [], []
    for b in range(B):
        vecs = [x[b, i] for i in range(L)] + [torch.zeros(D, dtype=x.dtype)] * (n - L)
        sc = [scores[b, i] for i in range(L)] + [torch.zeros((), dtype=scores.dtype)] * (n - L)
        real = [bool(mask[b, i]) for i in range(L)] + [False] * (n - L)

        def rank() -> list[int]:
            # real tokens first, then by descending score, ties by position
            return sorted(range(len(vecs)), key=lambda i: (not real[i], -float(sc[i].detach()), i))

        if hard:
            win = rank()[:k]
            if sort_back:
                win = sorted(win)
            vecs, sc, real = [vecs[i] for i in win], [sc[i] for i in win], [real[i] for i in win]
        else:
            for _ in range(rounds):
                order = rank()
                half = len(order) // 2
                top, bottom = order[:half], order[half:]
                if flip:
                    bottom = bottom[::-1]
                pairs = list(zip(top, bottom))
                if sort_back:
                    pairs.sort(key=lambda p: p[0])
                new_vecs, new_sc, new_real = [], [], []
                for a, c in pairs:
                    if real[a] and real[c]:
                        logits = torch.stack([base ** sc[a], base ** sc[c]])
                        w_a, w_c = torch.softmax(logits, dim=0)
                    elif real[a]:
                        w_a, w_c = 1.0, 0.0
                    elif real[c]:
                        w_a, w_c = 0.0, 1.0
                    else:
                        w_a, w_c = 0.5, 0.5
                    new_vecs.append(w_a * vecs[a] + w_c * vecs[c])
                    new_sc.append(w_a * sc[a] + w_c * sc[c])
                    mass = torch.as_tensor(w_a).detach() * real[a] + torch.as_tensor(w_c).detach() * real[c]
                    new_real.append(bool(mass > 0.5))
                vecs, sc, real = new_vecs, new_sc, new_real
        keep = torch.tensor(real, dtype=torch.bool)
        outs.append(torch.stack(vecs) * keep[:, None].to(x.dtype))
        out_scores.append(torch.stack([torch.as_tensor(s, dtype=scores.dtype) for s in sc]) * keep.to(scores.dtype))
        out_masks.append(keep)
    return torch.stack(outs), torch.stack(out_scores), torch.stack(out_masks)


def block_attention_dense(
    mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """The block attention of ``pyramidion`` / ``pyramidion_block`` from an explicit block-diagonal mask."""
    B, T, D = x.shape
    H = mixer.config.heads
    c = max(1, min(mixer.config.block_size, T))
    split = lambda t: t.reshape(B, T, H, D // H).transpose(1, 2)  # noqa: E731  (B, H, T, P)
    q, k, v = split(mixer.q_proj(x)), split(mixer.k_proj(x)), split(mixer.v_proj(x))
    pos = torch.arange(T)
    allowed = (pos[:, None] // c) == (pos[None, :] // c)  # (T, T) same block
    if causal:
        allowed = allowed & (pos[None, :] <= pos[:, None])
    allowed = allowed[None, None]  # (1, 1, T, T)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]  # (B, 1, T, T)
    o = dense_attention(q, k, v, allowed)  # (B, H, T, P)
    y = mixer.out_proj(o.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
    if mask is not None:
        y = y * mask[..., None].to(y.dtype)
    return y


def pyramidion_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None):
    """(pooled, pooled mask) of a ``pyramidion`` mixer, computed with the loops above."""
    c = mixer.config
    y = block_attention_dense(mixer, x, mask)  # (B, T, D)
    scores = torch.sigmoid(mixer.scorer(y).squeeze(-1)) + 1e-5  # (B, T)
    k = max(1, math.ceil(x.shape[1] * c.keep_ratio - 1e-9))
    pooled, _, out_mask = halving_topk_loop(
        y, scores, k, mask, base=c.base, flip=c.flip, sort_back=c.sort_back, hard=c.hard
    )
    return pooled, out_mask

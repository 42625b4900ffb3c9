"""Longformer oracle: dense attention under an explicit (T x T) band + global boolean mask.

Slow on purpose (per-row loops in :func:`zoo.reference.dense.dense_attention`); never profiled.
"""

from __future__ import annotations

import torch

from zoo.functional import merge_heads, split_heads
from zoo.reference.dense import dense_attention


def global_positions(mask: torch.Tensor, num_global: int, global_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: explicit global_mask (restricted to real tokens) or the first num_global real tokens."""
    if global_mask is not None:
        return global_mask & mask
    out = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        real = mask[b].nonzero().flatten()
        out[b, real[:num_global]] = True
    return out


def band_mask(T: int, window: int, dilation: int = 1, causal: bool = False) -> torch.Tensor:
    """(T, T) bool: key j is in query i's window, j = i + dilation*t with |t| <= window (t <= 0 if causal)."""
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for t in range(-window, (0 if causal else window) + 1):
            j = i + dilation * t
            if 0 <= j < T:
                allowed[i, j] = True
    return allowed


def longformer_masks(
    mask: torch.Tensor, gm: torch.Tensor, window: int, dilation: int, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local_allowed, global_allowed), each (B, 1, T, T) bool.

    Non-global rows see real keys that are in the band and not global, plus every real global key;
    global rows see every real key. Causal mode keeps j <= i in both.
    """
    B, T = mask.shape
    band = band_mask(T, window, dilation, causal)  # (T, T)
    keys = mask[:, None, :]  # (B, 1, T)
    local = keys & ((band[None] & ~gm[:, None, :]) | gm[:, None, :])  # (B, T, T)
    glob = keys.expand(B, T, T).clone()  # (B, T, T)
    if causal:
        past = torch.ones(T, T, dtype=torch.bool).tril()
        local, glob = local & past, glob & past
    return local[:, None], glob[:, None]


def longformer_reference(
    mixer,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    global_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mixer's output computed densely from its own modules (q/k/v_proj, q/k/v_global, out_proj)."""
    c = mixer.config
    B, T, _ = x.shape
    m = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    gm = global_positions(m, c.num_global, global_mask)
    local_allowed, global_allowed = longformer_masks(m, gm, c.window, c.dilation, causal)
    H = c.heads
    q, k, v = (split_heads(proj(x), H) for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    o_local = dense_attention(q, k, v, local_allowed)  # (B, H, T, P)
    qg, kg, vg = (split_heads(proj(x), H) for proj in (mixer.q_global, mixer.k_global, mixer.v_global))
    o_global = dense_attention(qg, kg, vg, global_allowed)  # (B, H, T, P)
    o = torch.where(gm[:, None, :, None], o_global, o_local)
    y = mixer.out_proj(merge_heads(o))  # (B, T, D)
    return y * m[..., None].to(y.dtype)

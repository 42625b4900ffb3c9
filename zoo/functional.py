"""Shared pure helpers for the mixers (no modules, no state). Everything here is public.

Shapes: (B, T, D) at the mixer boundary; (B, H, T, P) inside attention-like mixers, P = D / H.
Masks are bool (B, T), True = real token; additive biases are built here, with finite
negatives so a fully masked row never turns into NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

def neg_value(dtype: torch.dtype) -> float:
    """A finite "minus infinity" for additive masks, safe to add to any logit in ``dtype``."""
    return torch.finfo(dtype).min / 2


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, T, H*P) -> (B, H, T, P)
    return rearrange(t, "b t (h p) -> b h t p", h=heads)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    # (B, H, T, P) -> (B, T, H*P)
    return rearrange(t, "b h t p -> b t (h p)")


def pad_to_multiple(
    x: torch.Tensor, mask: torch.Tensor | None, multiple: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-pad (B, T, D) with zero rows to a multiple of ``multiple``; the new rows are masked.

    Returns (x_padded, mask_padded). ``mask_padded`` is None only when no padding was needed and
    ``mask`` was None. The caller slices outputs back to T; the padding cost is the mixer's.
    """
    B, T, _ = x.shape
    pad = (-T) % multiple
    if pad == 0:
        return x, mask
    x = F.pad(x, (0, 0, 0, pad))  # (B, T + pad, D)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
    mask = F.pad(mask, (0, pad), value=False)  # (B, T + pad)
    return x, mask


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias (B, 1, 1, T): 0 for real keys, a finite large negative for padded ones."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask, neg_value(dtype))
    return bias[:, None, None, :]  # (B, 1, 1, T)


def safe_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """Key mask where a fully padded sequence lets every key through.

    Such a sequence's outputs are zeroed afterwards (C2); attending uniformly instead of over an
    empty set keeps the softmax finite (C4) without a second code path.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused softmax attention. q, k, v: (B, H, T, P); mask bool (B, T) over keys."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    keys = safe_key_mask(mask)[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        T = q.shape[-2]
        tril = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        # The diagonal is always allowed, so a query whose past is all padding stays finite.
        keys = (keys & tril) | torch.eye(T, dtype=torch.bool, device=q.device)  # (B, 1, T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scale)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention with the (B, H, T, T) matrix materialised (the papers' baseline).

    The softmax runs in fp32 for half inputs, as the fused kernels do internally.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, T)
    T = q.shape[-2]
    if mask is not None:
        scores = scores.masked_fill(~safe_key_mask(mask)[:, None, None, :], neg_value(scores.dtype))
    if causal:
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, neg_value(scores.dtype))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)  # (B, H, T, T)
    return torch.matmul(probs, v)  # (B, H, T, P)


def masked_mean(t: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean over real positions along ``dim`` (mask broadcastable to t); zero when none is real."""
    if mask is None:
        return t.mean(dim=dim)
    weights = mask.to(t.dtype)
    total = (t * weights).sum(dim=dim)
    count = weights.sum(dim=dim).clamp_min(1.0)
    return total / count


def linear_flops(batch: int, length: int, d_in: int, d_out: int, count: int = 1) -> float:
    """FLOPs of ``count`` dense projections (B*T, d_in) @ (d_in, d_out), multiply-add = 2."""
    return 2.0 * batch * length * d_in * d_out * count


def log2_ceil(n: int) -> int:
    return max(0, math.ceil(math.log2(max(n, 1))))

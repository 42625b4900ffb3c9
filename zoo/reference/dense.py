"""Dense masked softmax attention written the slow, obvious way (an oracle, never profiled)."""

from __future__ import annotations

import math

import torch


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax over allowed keys, one query row at a time.

    q, k, v: (B, H, T, P); allowed: bool broadcastable to (B, H, T, T), True = query i may see key j.
    A row with no allowed key returns zeros.
    """
    B, H, T, P = q.shape
    scale = 1.0 / math.sqrt(P) if scale is None else scale
    allowed = allowed.expand(B, H, T, k.shape[2])
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                keys = allowed[b, h, i].nonzero().flatten()
                if keys.numel() == 0:
                    continue
                logits = (k[b, h, keys] @ q[b, h, i]) * scale  # (n_keys,)
                weights = torch.softmax(logits.double(), dim=0).to(q.dtype)
                out[b, h, i] = weights @ v[b, h, keys]
    return out


def allowed_from_mask(mask: torch.Tensor | None, T: int, causal: bool = False, device=None) -> torch.Tensor:
    """(B or 1, 1, T, T) bool: key j real (and j <= i when causal)."""
    allowed = torch.ones(1, 1, T, T, dtype=torch.bool, device=device)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return allowed

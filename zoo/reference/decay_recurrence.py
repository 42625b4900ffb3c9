"""The decayed linear-attention recurrence, token by token (oracle of ``zoo.scan``; never profiled).

    S_t = diag(g_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t            (causal)

Bidirectional adds a right-to-left state that holds only the strictly later tokens,
``R_t = diag(g_t) (R_{t+1} + k_{t+1}^T v_{t+1})``, so ``o_t = q_t (S_t + R_t)`` counts token t once
and weighs a later token s by the decays of tokens t .. s-1. A padded token is skipped outright:
it neither writes to nor decays either state.
"""

from __future__ import annotations

import torch


def _decay_state(state: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """state (K, V) times g: a scalar () or one value per key channel (K,)."""
    return state * (g[:, None] if g.dim() == 1 else g)


def decay_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    real: torch.Tensor | None = None,
    bidirectional: bool = False,
) -> torch.Tensor:
    """q, k (B, H, T, K), v (B, H, T, V), decay g (B, H, T) or (B, H, T, K) in (0, 1], real (B, T).

    Returns o (B, H, T, V); rows of padded tokens hold whatever the state gives (callers zero them).
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    real = torch.ones(B, T, dtype=torch.bool) if real is None else real
    o = torch.zeros(B, H, T, V, dtype=v.dtype)
    for b in range(B):
        for h in range(H):
            state = torch.zeros(K, V, dtype=v.dtype)
            for t in range(T):
                if real[b, t]:
                    state = _decay_state(state, g[b, h, t]) + torch.outer(k[b, h, t], v[b, h, t])
                o[b, h, t] = q[b, h, t] @ state
            if not bidirectional:
                continue
            later = torch.zeros(K, V, dtype=v.dtype)  # R_t: tokens s > t
            for t in range(T - 1, -1, -1):
                if t + 1 < T and real[b, t + 1]:
                    later = later + torch.outer(k[b, h, t + 1], v[b, h, t + 1])
                if real[b, t]:
                    later = _decay_state(later, g[b, h, t])
                o[b, h, t] = o[b, h, t] + q[b, h, t] @ later
    return o

"""GLA oracle (``gla``): the per-channel gated recurrence token by token, for the mixer's weights.

``S_t = diag(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` with ``g_t = sigmoid(x W_1 W_2 + b)^(1/n)``
(n = gate_logit_normalizer) written directly as a decay rather than its logarithm; bidirectional
adds the right-to-left state of :mod:`zoo.reference.decay_recurrence`. Then the per-head RMSNorm,
the swish gate and W_O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.reference.decay_recurrence import decay_recurrence


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    B, T, D = t.shape
    return t.reshape(B, T, H, D // H).permute(0, 2, 1, 3)  # (B, H, T, D/H)


def gla_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    c = mixer.config
    H = c.heads
    B, T, _ = x.shape
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    q = _heads(mixer.q_proj(x), H) / (c.key_dim // H) ** 0.5
    k, v = _heads(mixer.k_proj(x), H), _heads(mixer.v_proj(x), H)
    g = torch.sigmoid(mixer.gk_up(mixer.gk_down(x))) ** (1.0 / c.gate_logit_normalizer)  # (B, T, key width)
    o = decay_recurrence(q, k, v, _heads(g, H), real, bidirectional=not causal)  # (B, H, T, V)
    o = o / torch.sqrt((o * o).mean(-1, keepdim=True) + c.norm_eps) * mixer.norm_weight
    o = o.permute(0, 2, 1, 3).reshape(B, T, -1)  # (B, T, D)
    y = mixer.out_proj(F.silu(mixer.g_proj(x)) * o)
    return y * real[..., None].to(y.dtype)

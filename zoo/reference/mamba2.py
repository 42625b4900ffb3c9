"""Mamba-2 oracle (``mamba2``): the SSD layer token by token, for the mixer's weights.

The short conv as an explicit sum over taps (padded inputs zeroed first), the SSD recurrence
``S_t = exp(dt_t A) S_{t-1} + B_t^T (dt_t x_t)``, ``y_t = C_t S_t + D x_t`` per head (bidirectional:
plus the right-to-left state of :mod:`zoo.reference.decay_recurrence`), then
``rmsnorm(y * silu(z)) * w`` and W_O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.reference.decay_recurrence import decay_recurrence


def conv_taps(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """u (B, T, C), weight (C, 1, w): out_t = bias + sum_i weight[:, 0, w-1-i] * u_{t-i} (zeros before 0)."""
    B, T, C = u.shape
    w = weight.shape[-1]
    out = bias.expand(B, T, C).clone()
    for t in range(T):
        for i in range(min(w, t + 1)):
            out[:, t] = out[:, t] + weight[:, 0, w - 1 - i] * u[:, t - i]
    return out


def mamba2_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    c = mixer.config
    di, N, H = c.d_inner, c.d_state, c.heads
    B, T, _ = x.shape
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    proj = mixer.in_proj(x)
    z, xbc, dt_raw = proj[..., :di], proj[..., di : 2 * di + 2 * N], proj[..., 2 * di + 2 * N :]
    xbc = xbc * real[..., None].to(x.dtype)
    xbc = F.silu(conv_taps(xbc, mixer.conv1d.weight, mixer.conv1d.bias))
    xs, Bm, Cm = xbc[..., :di], xbc[..., di : di + N], xbc[..., di + N :]
    dt = F.softplus(dt_raw + mixer.dt_bias)  # (B, T, H)
    decay = torch.exp(dt * -torch.exp(mixer.A_log))  # (B, T, H)
    xh = xs.reshape(B, T, H, di // H).permute(0, 2, 1, 3)  # (B, H, T, P)
    v = xh * dt.permute(0, 2, 1)[..., None]
    k = Bm[:, None].expand(B, H, T, N)
    q = Cm[:, None].expand(B, H, T, N)
    y = decay_recurrence(q, k, v, decay.permute(0, 2, 1), real, bidirectional=not causal)  # (B, H, T, P)
    y = y + mixer.D[None, :, None, None] * xh
    y = y.permute(0, 2, 1, 3).reshape(B, T, di) * F.silu(z)
    y = y / torch.sqrt((y * y).mean(-1, keepdim=True) + c.norm_eps) * mixer.norm_weight
    out = mixer.out_proj(y)
    return out * real[..., None].to(out.dtype)

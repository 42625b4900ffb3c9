"""Hyena oracle: the order-N recurrence with every convolution an explicit sum (O(T^2))."""

from __future__ import annotations

import torch


def causal_conv_reference(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise causal convolution by taps: y[b, t, c] = bias[c] + sum_j weight[c, j] u[b, t - taps + 1 + j, c]."""
    taps = weight.shape[-1]
    y = torch.zeros_like(u) + bias
    for t in range(u.shape[1]):
        for j in range(taps):
            s = t - (taps - 1) + j
            if s >= 0:
                y[:, t] = y[:, t] + weight[:, j] * u[:, s]
    return y


def long_conv_reference(z: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor | None) -> torch.Tensor:
    """y[b, t, c] = sum_s h_c(t - s) z[b, s, c]; h(l) = forward[:, l] for l >= 0, backward[:, -l] for
    l < 0 (zero when backward is None). z (B, T, C); forward, backward (C, T)."""
    T = z.shape[1]
    y = torch.zeros_like(z)
    for t in range(T):
        for s in range(T):
            lag = t - s
            if lag >= 0:
                y[:, t] = y[:, t] + forward[:, lag] * z[:, s]
            elif backward is not None:
                y[:, t] = y[:, t] + backward[:, -lag] * z[:, s]
    return y


def hyena_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Hyena for the mixer's weights and implicit filters (``mixer.filters``), padded positions zeroed."""
    c = mixer.config
    B, T, D = x.shape
    keep = torch.ones(B, T, 1, dtype=x.dtype) if mask is None else mask[..., None].to(x.dtype)
    u = causal_conv_reference(mixer.in_proj(x) * keep, mixer.short_conv_weight, mixer.short_conv_bias)
    v, *gates = u.split(D, dim=-1)  # (B, T, D) each
    forward, backward = mixer.filters(T, x.dtype)  # (N, D, T) each, both sides
    z = v
    for n in range(c.order):
        z = z * keep
        conv = long_conv_reference(z, forward[n], None if causal else backward[n])
        z = gates[n] * (conv + mixer.skip[n] * z)
    y = mixer.out_proj(z)
    return y * keep

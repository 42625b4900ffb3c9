"""Delta-rule oracles (``deltanet``, ``gated_deltanet``), the slow, obvious way.

* :func:`delta_rule_recurrent`: the token-by-token state update, one outer product per token.
* :func:`delta_layer_reference`: a whole layer for a built mixer's weights, with the short
  convolution as an explicit sum over taps, the backward scan run on the reversed sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def delta_rule_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
    g: torch.Tensor | None = None, scale: float | None = None,
) -> torch.Tensor:
    """o_t = scale q_t S_t, S_t = a_t S_{t-1} + beta_t k_t^T (v_t - a_t k_t S_{t-1}), a_t = exp(g_t).

    q, k (B, H, T, K); v (B, H, T, V); beta, g (B, H, T) (g None: a_t = 1). Returns (B, H, T, V).
    """
    B, H, T, K = q.shape
    scale = K**-0.5 if scale is None else scale
    S = torch.zeros(B, H, K, v.shape[-1], dtype=q.dtype)
    out = []
    for t in range(T):
        if g is not None:
            S = S * g[:, :, t].exp()[..., None, None]
        kt = k[:, :, t]  # (B, H, K)
        error = v[:, :, t] - torch.einsum("bhk,bhkv->bhv", kt, S)  # what the state predicts wrong
        S = S + beta[:, :, t, None, None] * kt[..., :, None] * error[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t] * scale, S))
    return torch.stack(out, dim=2)


def short_conv_reference(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y[t, c] = silu(sum_j weight[c, 0, j] z[t - (taps - 1) + j, c]) over valid indices; z (T, C)."""
    T, C = z.shape
    taps = weight.shape[-1]
    y = torch.zeros_like(z)
    for t in range(T):
        for j in range(taps):
            s = t - (taps - 1) + j
            if s >= 0:
                y[t] = y[t] + weight[:, 0, j] * z[s]
    return F.silu(y)


def _stream(mixer, x: torch.Tensor, real: torch.Tensor, reverse: bool):
    """One sequence's scan inputs (H, T, .) in scan order: padded tokens have zero projections
    (before the convolution), beta = 0 and log decay 0."""
    c = mixer.config
    order = torch.arange(x.shape[0]).flip(0) if reverse else torch.arange(x.shape[0])
    xs, keep = x[order], real[order, None].to(x.dtype)  # (T, D), (T, 1) in scan order

    def heads(t):
        return t.reshape(t.shape[0], c.heads, -1).transpose(0, 1)  # (H, T, P)

    def l2(t):
        return t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6)

    q = l2(heads(short_conv_reference(mixer.q_proj(xs) * keep, mixer.q_conv)))
    k = l2(heads(short_conv_reference(mixer.k_proj(xs) * keep, mixer.k_conv)))
    v = heads(short_conv_reference(mixer.v_proj(xs) * keep, mixer.v_conv))
    beta = (torch.sigmoid(mixer.b_proj(xs)) * keep).T  # (H, T)
    g = None
    if hasattr(mixer, "A_log"):
        g = (-mixer.A_log.exp() * F.softplus(mixer.a_proj(xs) + mixer.dt_bias) * keep).T  # (H, T)
    return order, q, k, v, beta, g


def delta_layer_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """A (gated) DeltaNet layer for the mixer's weights (bidirectional: the two scans summed)."""
    c = mixer.config
    B, T, D = x.shape
    real_all = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    o = torch.zeros(B, c.heads, T, c.head_dim, dtype=x.dtype)
    for b in range(B):
        for reverse in ([False] if causal else [False, True]):
            order, q, k, v, beta, g = _stream(mixer, x[b], real_all[b], reverse)
            ob = delta_rule_recurrent(q[None], k[None], v[None], beta[None], None if g is None else g[None])[0]
            o[b][:, order] = o[b][:, order] + ob  # (H, T, P) back in token order
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + c.norm_eps) * mixer.o_norm
    if hasattr(mixer, "g_proj"):
        o = o * F.silu(mixer.g_proj(x).reshape(B, T, c.heads, -1).transpose(1, 2))
    y = mixer.out_proj(o.transpose(1, 2).reshape(B, T, D))
    return y if mask is None else y * mask[..., None].to(y.dtype)

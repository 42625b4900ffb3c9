"""RetNet oracles (``retnet``): the recurrent form and the parallel form, for the mixer's weights.

* recurrent: :func:`zoo.reference.decay_recurrence.decay_recurrence` with g = gamma_h per token;
* parallel: the dense T x T matrix ``gamma_h^|n_t - n_s| (q_t . k_s)`` over real tokens, n_t the
  index of token t among the real tokens (so a padded token neither counts nor decays), lower
  triangular when causal.

Then GroupNorm per head, the swish gate and W_O, written out with explicit means and variances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.reference.decay_recurrence import decay_recurrence


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    B, T, D = t.shape
    return t.reshape(B, T, H, D // H).permute(0, 2, 1, 3)  # (B, H, T, D/H)


def gammas(H: int, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([1.0 - 2.0 ** (-5 - h) for h in range(H)], dtype=dtype)


def retention(mixer, x: torch.Tensor, real: torch.Tensor, causal: bool, form: str) -> torch.Tensor:
    """Per-head retention output o (B, H, T, V) before the norm."""
    H = mixer.config.heads
    q = _heads(mixer.q_proj(x), H) / mixer.config.head_dim**0.5
    k, v = _heads(mixer.k_proj(x), H), _heads(mixer.v_proj(x), H)
    B, _, T, _ = q.shape
    gamma = gammas(H, x.dtype)
    if form == "recurrent":
        g = gamma[None, :, None].expand(B, H, T)
        return decay_recurrence(q, k, v, g, real, bidirectional=not causal)
    n = real.long().cumsum(-1)  # (B, T): index among real tokens (+1)
    dist = n[:, :, None] - n[:, None, :]  # (B, T, T): n_t - n_s
    allowed = real[:, None, :] & ((dist >= 0) if causal else True)
    allowed = allowed & (torch.ones(T, T, dtype=torch.bool).tril() if causal else True)
    weight = gamma[None, :, None, None] ** dist.abs()[:, None].to(x.dtype)  # (B, H, T, T)
    weight = weight * allowed[:, None].to(x.dtype)
    return (weight * (q @ k.transpose(-1, -2))) @ v


def retnet_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                     form: str = "recurrent") -> torch.Tensor:
    c = mixer.config
    B, T, _ = x.shape
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    o = retention(mixer, x, real, causal, form)  # (B, H, T, V)
    mean = o.mean(dim=(-1,), keepdim=True)
    var = ((o - mean) ** 2).mean(dim=(-1,), keepdim=True)
    o = (o - mean) / torch.sqrt(var + c.norm_eps)
    o = o.permute(0, 2, 1, 3).reshape(B, T, -1)  # (B, T, H*V)
    o = o * mixer.group_norm.weight + mixer.group_norm.bias
    y = mixer.out_proj(F.silu(mixer.g_proj(x)) * o)
    return y * real[..., None].to(y.dtype)

"""TransNormer oracles, written the slow, obvious way (never registered, never profiled).

* NormAttention: bidirectional as the explicit quadratic form (Qf Kf^T) V with a dense key mask;
  causal as the step-by-step recurrence S_t = S_{t-1} + kf_t^T v_t, o_t = qf_t S_t.
* DiagAttention: a dense T x T weight matrix with an explicit "same block, real key, j <= i" mask.
* URPE as explicit p x p matrices R_t (I - 2 u u^T).

Each oracle takes a built mixer and reads its parameters, so tests compare the fast path against
the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def urpe_matrix(u: torch.Tensor, theta: torch.Tensor, t: int) -> torch.Tensor:
    """The p x p matrix of URPE at position t: R_t (I - 2 u u^T), R_t rotating pairs (2i, 2i+1)."""
    p = u.shape[0]
    house = torch.eye(p, dtype=u.dtype) - 2.0 * torch.outer(u, u)
    rot = torch.zeros(p, p, dtype=u.dtype)
    for i in range(p // 2):
        a = t * theta[i]
        rot[2 * i, 2 * i] = torch.cos(a)
        rot[2 * i, 2 * i + 1] = -torch.sin(a)
        rot[2 * i + 1, 2 * i] = torch.sin(a)
        rot[2 * i + 1, 2 * i + 1] = torch.cos(a)
    return rot @ house


def apply_urpe(z: torch.Tensor, u: torch.Tensor, theta: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """z (..., T, p) -> row t multiplied by urpe_matrix(positions[t])."""
    rows = [z[..., t, :] @ urpe_matrix(u, theta, positions[t]).T for t in range(z.shape[-2])]
    return torch.stack(rows, dim=-2)


def simple_rms_norm_reference(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return z / (torch.sqrt((z * z).mean(dim=-1, keepdim=True)) + eps)


def _qkv(mixer, x: torch.Tensor):
    """Per-head q, k, v (B, H, T, p) from the mixer's projections."""
    H = mixer.config.heads

    def split(t: torch.Tensor) -> torch.Tensor:
        B, T, D = t.shape
        return t.reshape(B, T, H, D // H).permute(0, 2, 1, 3)

    return split(mixer.q_proj(x)), split(mixer.k_proj(x)), split(mixer.v_proj(x))


def _merge(o: torch.Tensor) -> torch.Tensor:
    B, H, T, p = o.shape
    return o.permute(0, 2, 1, 3).reshape(B, T, H * p)


def norm_attention_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """NormAttention (``transnormer``) for the mixer's weights, zoo masking (padded keys dropped)."""
    c = mixer.config
    B, T, _ = x.shape
    q, k, v = _qkv(mixer, x)
    phi = (lambda z: F.elu(z)) if c.variant == "t1" else (lambda z: 1.0 + F.elu(z))
    qf, kf = phi(q), phi(k)
    if c.urpe:
        qf = apply_urpe(qf, mixer.householder_u, mixer.theta, list(range(T)))
        kf = apply_urpe(kf, mixer.householder_u, mixer.theta, list(range(T)))
    real = torch.ones(B, T, dtype=torch.bool) if mask is None or c.faithful_mask else mask
    o = torch.zeros_like(v)
    if causal:
        for b in range(B):
            for h in range(c.heads):
                state = torch.zeros(c.head_dim, c.head_dim, dtype=x.dtype)
                for t in range(T):
                    if real[b, t]:
                        state = state + torch.outer(kf[b, h, t], v[b, h, t])
                    o[b, h, t] = qf[b, h, t] @ state
    else:
        weights = qf @ kf.transpose(-1, -2)  # (B, H, T, T)
        weights = weights * real[:, None, None, :].to(x.dtype)
        o = weights @ v
    y = mixer.out_proj(simple_rms_norm_reference(_merge(o)))
    return y if mask is None else y * mask[..., None].to(y.dtype)


def diag_attention_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """DiagAttention (``transnormer_diag``) as a dense T x T matrix with a block mask, zoo masking."""
    c = mixer.config
    B, T, _ = x.shape
    C = c.block_size
    q, k, v = _qkv(mixer, x)
    q = q / math.sqrt(c.head_dim)
    if c.urpe:
        within = [t % C for t in range(T)]
        q = apply_urpe(q, mixer.householder_u, mixer.theta, within)
        k = apply_urpe(k, mixer.householder_u, mixer.theta, within)
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    o = torch.zeros_like(v)
    for b in range(B):
        for h in range(c.heads):
            for i in range(T):
                keys = [
                    j for j in range(T)
                    if j // C == i // C and real[b, j] and (not causal or j <= i)
                ]
                if not keys:
                    continue
                scores = torch.stack([q[b, h, i] @ k[b, h, j] for j in keys])
                weights = torch.relu(scores) if c.variant == "t1" else torch.softmax(scores, dim=0)
                o[b, h, i] = sum(w * v[b, h, j] for w, j in zip(weights, keys))
    y = _merge(o)
    if c.variant == "t1":
        y = simple_rms_norm_reference(y)
    y = mixer.out_proj(y)
    return y if mask is None else y * mask[..., None].to(y.dtype)

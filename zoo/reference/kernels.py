"""Oracles for the kernel and sketching mixers: Performer (FAVOR+), Nyströmformer, Linformer.

Written the slow, obvious way: loops over batch, head and query, explicit lists of visible keys,
no chunking, no masking tricks. Inputs are per-head tensors q, k, v of shape (B, H, T, P) (what
the mixers compute from their q_proj / k_proj / v_proj); outputs are (B, H, T, P) before the
output projection. Never registered, never profiled.
"""

from __future__ import annotations

import math

import torch


def _visible_keys(mask: torch.Tensor | None, b: int, i: int, T: int, causal: bool) -> list[int]:
    real = [j for j in range(T) if mask is None or bool(mask[b, j])]
    if mask is not None and not bool(mask[b].any()):
        real = list(range(T))  # a fully padded sequence attends everywhere (then zeroed)
    return [j for j in real if not causal or j <= i]


def performer_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    omega: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    eps: float = 1e-4,
) -> torch.Tensor:
    """FAVOR+ as a quadratic form: o_i = sum_j w_ij v_j / sum_j w_ij over the keys i can see.

    w_ij = phi(q_i)·phi_i(k_j), with phi(q_i) = exp(omega·q~_i - max_l omega_l·q~_i) + eps and
    phi_i(k_j) = exp(omega·k~_j - ||k~_j||^2/2 - m_i) + eps, m_i the largest exponent among the
    keys visible to i. A query with no visible key gets zeros.
    """
    B, H, T, P = q.shape
    scale = P**-0.25
    rows = []
    for b in range(B):
        for h in range(H):
            kh = k[b, h] * scale  # (T, P)
            exps = kh @ omega.t() - 0.5 * kh.square().sum(-1, keepdim=True)  # (T, R), row j: key j
            for i in range(T):
                keys = _visible_keys(mask, b, i, T, causal)
                if not keys:
                    rows.append(torch.zeros(P, dtype=q.dtype))
                    continue
                proj_q = omega @ (q[b, h, i] * scale)  # (R,)
                phi_q = torch.exp(proj_q - proj_q.max().detach()) + eps  # stabilisers carry no gradient
                e = exps[keys]  # (n_visible, R)
                m_i = e.max().detach()
                w = (torch.exp(e - m_i) + eps) @ phi_q  # (n_visible,) kernel values phi(q_i)·phi_i(k_j)
                rows.append(w @ v[b, h, keys] / w.sum())
    return torch.stack(rows).reshape(B, H, T, P)


def landmark_segments(n_real: int, num_landmarks: int) -> list[list[int]]:
    """Split ranks 0..n_real-1 into ``num_landmarks`` contiguous, near-equal runs (some may be empty)."""
    segs: list[list[int]] = [[] for _ in range(num_landmarks)]
    for r in range(n_real):
        segs[(r * num_landmarks) // n_real].append(r)
    return segs


def iterative_pinv_oracle(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Newton-Schulz-type iteration for pinv(a), a (M, M), Z0 = a^T / max column sum."""
    M = a.shape[0]
    eye = torch.eye(M, dtype=a.dtype)
    z = a.t() / a.sum(dim=0).max()
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_landmarks: int,
    mask: torch.Tensor | None = None,
    pinv_iterations: int = 6,
    conv_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nyström attention per sequence, over its real tokens only.

    The real tokens (in order) are split into ``num_landmarks`` contiguous near-equal runs; empty
    runs are dropped; landmarks are the run means of q~ = q p^(-1/4) and k~. With L the remaining
    landmarks: F = softmax(q~ Kt^T), A = softmax(Qt Kt^T), Bk = softmax(Qt k~_real^T),
    O = F pinv(A) Bk V_real. A sequence with at most ``num_landmarks`` real tokens gets exact
    softmax attention over its real tokens instead. ``conv_weight`` (H, W): a depthwise
    convolution of the masked V along the sequence (zero padding), added to O.
    """
    B, H, T, P = q.shape
    s = P**-0.25
    out = torch.zeros_like(q)
    for b in range(B):
        real = _visible_keys(mask, b, 0, T, causal=False)
        N = len(real)
        for h in range(H):
            qh, kh, vh = q[b, h] * s, k[b, h] * s, v[b, h]
            if N <= num_landmarks:
                probs = torch.softmax(qh @ kh[real].t(), dim=-1)  # (T, N)
                o = probs @ vh[real]
            else:
                segs = [[real[r] for r in seg] for seg in landmark_segments(N, num_landmarks) if seg]
                qt = torch.stack([qh[idx].mean(0) for idx in segs])  # (L, P)
                kt = torch.stack([kh[idx].mean(0) for idx in segs])  # (L, P)
                f = torch.softmax(qh @ kt.t(), dim=-1)  # (T, L)
                a = torch.softmax(qt @ kt.t(), dim=-1)  # (L, L)
                bk = torch.softmax(qt @ kh[real].t(), dim=-1)  # (L, N)
                o = f @ iterative_pinv_oracle(a, pinv_iterations) @ (bk @ vh[real])
            out[b, h] = o
        if conv_weight is not None:
            width = conv_weight.shape[-1]
            half = width // 2
            keep = torch.zeros(T, dtype=q.dtype)
            keep[real] = 1.0
            vm = v[b] * keep[None, :, None]  # (H, T, P), padded values zeroed
            for h in range(H):
                for t in range(width):  # out[i] += w[t] * vm[i + t - half] where that index exists
                    shift = t - half
                    lo, hi = max(0, -shift), min(T, T - shift)
                    if lo < hi:
                        out[b, h, lo:hi] = out[b, h, lo:hi] + conv_weight[h, t] * vm[h, lo + shift : hi + shift]
    return out


def linformer_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_k: torch.Tensor,
    proj_v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linformer: compressed keys/values Kc[h, r] = sum_t E[h, r, t] m_t k_t, softmax over the r rows.

    proj_k, proj_v: (H, k, >= T) projection matrices (the same tensor when shared).
    """
    B, H, T, P = q.shape
    kdim = proj_k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        keep = [1.0 if mask is None or bool(mask[b, t]) else 0.0 for t in range(T)]
        for h in range(H):
            kc = torch.zeros(kdim, P, dtype=q.dtype)
            vc = torch.zeros(kdim, P, dtype=q.dtype)
            for r in range(kdim):
                for t in range(T):
                    kc[r] = kc[r] + proj_k[h, r, t] * keep[t] * k[b, h, t]
                    vc[r] = vc[r] + proj_v[h, r, t] * keep[t] * v[b, h, t]
            for i in range(T):
                w = torch.softmax(kc @ q[b, h, i] / math.sqrt(P), dim=0)  # (k,)
                out[b, h, i] = w @ vc
    return out

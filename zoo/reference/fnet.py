"""FNet written with explicit DFT matrices (an oracle, never profiled).

``Re(F_T X F_D) = C_T X C_D - S_T X S_D`` with ``C_N[j, k] = cos(2 pi j k / N)`` and
``S_N[j, k] = sin(2 pi j k / N)``: no FFT involved, so it checks the mixer's FFT path and its
half-spectrum reconstruction independently.
"""

from __future__ import annotations

import math

import torch


def dft_cos_sin(n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(C_n, S_n), each (n, n). The phase j*k is reduced mod n in integers first, for accuracy."""
    j = torch.arange(n, dtype=torch.int64)
    phase = (j[:, None] * j[None, :]) % n  # (n, n), exact integers
    angle = phase.to(torch.float64) * (2.0 * math.pi / n)
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def fnet_reference(x: torch.Tensor, mask: torch.Tensor | None = None, norm: str = "backward") -> torch.Tensor:
    """x (B, T, D) -> Re(DFT2) per sequence, in float64; padded rows zeroed before and after."""
    x = x.to(torch.float64)
    B, T, D = x.shape
    if mask is not None:
        x = x * mask[..., None].to(x.dtype)
    c_t, s_t = dft_cos_sin(T)
    c_d, s_d = dft_cos_sin(D)
    out = torch.empty_like(x)
    for b in range(B):
        out[b] = c_t @ x[b] @ c_d - s_t @ x[b] @ s_d  # (T, D)
    if norm == "ortho":
        out = out / math.sqrt(T * D)
    if mask is not None:
        out = out * mask[..., None].to(out.dtype)
    return out

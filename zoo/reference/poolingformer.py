"""Slow, obvious oracle for Poolingformer: both levels from explicit dense masks and pooled keys
built slot by slot in Python loops (MIXERS.md 4.2)."""

from __future__ import annotations

import torch

from zoo.reference.dense import dense_attention


def grid_slots(T: int, kernel: int, stride: int) -> list[list[int]]:
    """Positions of every grid slot u = 0, 1, ... whose window starts inside [0, T) (at least one slot).

    Slot u covers u*stride - off .. u*stride - off + kernel - 1, off = floor((kernel - stride) / 2).
    """
    off = (kernel - stride) // 2
    slots, u = [], 0
    while u == 0 or u * stride - off < T:
        start = u * stride - off
        slots.append(list(range(start, start + kernel)))
        u += 1
    return slots


def pool_slot(
    mixer, which: str, k2: torch.Tensor, u_in: torch.Tensor, taps: list[int], real: list[bool]
) -> torch.Tensor:
    """One pooled key (which='k') or value ('v') of one sequence from its slot's taps."""
    c = mixer.config
    D, H = c.dim, c.heads
    present = [j for j, r in zip(taps, real) if r]
    if not present:
        return torch.zeros(D, dtype=k2.dtype)
    if c.pool == "mean":
        return k2[present].mean(dim=0)
    if c.pool == "max":
        return k2[present].max(dim=0).values
    if c.pool == "conv":
        weight = getattr(mixer, f"{which}_pool_weight")  # (D, kernel)
        return sum(weight[:, t] * k2[j] for t, (j, r) in enumerate(zip(taps, real)) if r)
    # ldconv: kernel rows predicted from the slot's mean level-2 input, softmax over the taps
    proj = getattr(mixer, f"{which}_pool_proj")
    omega = torch.softmax(proj(u_in[present].mean(dim=0)).reshape(H, c.pool_kernel), dim=-1)  # (H, kernel)
    out = torch.zeros(D, dtype=k2.dtype)
    group = D // H
    for r in range(H):
        ch = slice(r * group, (r + 1) * group)
        for t, (j, real_tap) in enumerate(zip(taps, real)):
            if real_tap:
                out = out + torch.nn.functional.pad(omega[r, t] * k2[j, ch], (r * group, D - (r + 1) * group))
    return out


def poolingformer_reference(mixer, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Output of a ``poolingformer`` mixer computed densely with its own weights."""
    c = mixer.config
    B, T, D = x.shape
    H = c.heads
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool)
    split = lambda t: t.reshape(B, -1, H, D // H).transpose(1, 2)  # noqa: E731  (B, H, T, P)
    merge = lambda t: t.transpose(1, 2).reshape(B, -1, D)  # noqa: E731  (B, T, D)

    pos = torch.arange(T)
    band = (pos[:, None] - pos[None, :]).abs() <= c.local_window // 2  # (T, T)
    allowed1 = band[None, None] & mask[:, None, None, :]  # (B, 1, T, T)
    y = merge(dense_attention(split(mixer.q_proj(x)), split(mixer.k_proj(x)), split(mixer.v_proj(x)), allowed1))
    if c.pool_window == 0:
        return mixer.out_proj(y) * mask[..., None].to(x.dtype)

    u = x + y  # (B, T, D) level-2 input
    q2, k2, v2 = mixer.q2_proj(u), mixer.k2_proj(u), mixer.v2_proj(u)
    slots = grid_slots(T, c.pool_kernel, c.pool_stride)
    off = (c.pool_kernel - c.pool_stride) // 2
    kbar = torch.zeros(B, len(slots), D, dtype=x.dtype)
    vbar = torch.zeros(B, len(slots), D, dtype=x.dtype)
    slot_real = torch.zeros(B, len(slots), dtype=torch.bool)
    for b in range(B):
        for s, taps in enumerate(slots):
            real = [0 <= j < T and bool(mask[b, j]) for j in taps]
            kbar[b, s] = pool_slot(mixer, "k", k2[b], u[b], taps, real)
            vbar[b, s] = pool_slot(mixer, "v", v2[b], u[b], taps, real)
            slot_real[b, s] = any(real)
    twice_centre = torch.tensor([2 * (s * c.pool_stride - off) + c.pool_kernel - 1 for s in range(len(slots))])
    near = (twice_centre[None, :] - 2 * pos[:, None]).abs() <= c.pool_window  # (T, K)
    allowed2 = near[None, None] & slot_real[:, None, None, :]  # (B, 1, T, K)
    z = merge(dense_attention(split(q2), split(kbar), split(vbar), allowed2))
    return mixer.out_proj(y + z) * mask[..., None].to(x.dtype)

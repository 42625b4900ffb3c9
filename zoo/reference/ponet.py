"""PoNet written the slow, obvious way from MIXERS.md section 2 (an oracle, never profiled).

Loops over sequences, heads, positions and segments; no scatter, no reshape tricks, no fused
projections. Reads the weights of a ``PoNetMixer`` so tests can compare the two on the same
parameters (outputs and, through autograd, gradients).
"""

from __future__ import annotations

import math

import torch


def fixed_segment_len(config, T: int, n_real: int) -> int:
    """Segment length of one sequence with n_real real tokens, padded length T (MIXERS.md 2.4)."""
    if config.segment_len is not None:
        return config.segment_len
    if config.faithful_segments:
        return T // config.num_segments + 1  # the LRA formula, on the padded length
    return max(1, math.ceil(n_real / config.num_segments))


def ponet_reference(
    mixer,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward pass of ``mixer`` (a PoNetMixer) computed with loops; x (B, T, D) -> (B, T, D)."""
    c = mixer.config
    B, T, D = x.shape
    H = c.heads
    P = D // H
    radius = c.local_kernel // 2
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool)

    def lin(layer, z):
        return z @ layer.weight.T + layer.bias

    rows = []
    for b in range(B):
        xb = x[b]  # (T, D)
        real = [i for i in range(T) if bool(mask[b, i])]
        if not real:
            rows.append(torch.zeros(T, D, dtype=x.dtype))
            continue
        Q, K = lin(mixer.q_proj, xb), lin(mixer.k_proj, xb)  # (T, D)
        G, S, L = lin(mixer.gate_proj, xb), lin(mixer.segment_proj, xb), lin(mixer.local_proj, xb)

        # GA: per head, the mean real query attends over the real keys; the keys are the values
        g = []
        for h in range(H):
            cols = slice(h * P, (h + 1) * P)
            q_mean = torch.stack([Q[i, cols] for i in real]).mean(dim=0)  # (P,)
            logits = torch.stack([q_mean @ K[j, cols] for j in real]) / math.sqrt(P)  # (N,)
            weights = torch.softmax(logits, dim=0)
            g.append(sum(weights[n] * K[j, cols] for n, j in enumerate(real)))  # (P,)
        g = torch.cat(g)  # (D,)

        if segment_ids is not None:
            seg_of = [int(segment_ids[b, i]) for i in range(T)]
        else:
            seg_len = fixed_segment_len(c, T, len(real))
            seg_of = [i // seg_len for i in range(T)]

        out_rows = []
        for i in range(T):
            if i not in real:
                out_rows.append(torch.zeros(D, dtype=x.dtype))
                continue
            # SMP: max over the real tokens sharing i's segment id
            members = [j for j in real if seg_of[j] == seg_of[i]]
            s = torch.stack([S[j] for j in members]).amax(dim=0)  # (D,)
            # LMP: max over the real tokens in the centred window (positions outside [0, T) ignored)
            window = [j for j in range(i - radius, i + radius + 1) if 0 <= j < T and j in real]
            l = torch.stack([L[j] for j in window]).amax(dim=0)  # (D,)
            y = (g + s) * G[i] + l  # (D,)
            out_rows.append(lin(mixer.out_proj, y))
        rows.append(torch.stack(out_rows))
    return torch.stack(rows)  # (B, T, D)

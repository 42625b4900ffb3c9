"""Skeinformer oracle: the estimator of MIXERS.md 7.3 evaluated row by row for given draws.

Given the pilot positions and the sampled columns of one call (``SkeinDraw``), every query row is
computed from the formula with plain loops in the input dtype, without any max-shift:

* a pilot query gets its exact softmax-attention row over the real keys;
* any other query i gets
  (sum_{j in S} e_ij v_j + g_i sum_{real j not in S} v_j) / (sum_{j in S} e_ij + g_i (N - d)),
  e_ij = exp(q_i . k_j), g_i = exp(mean_{j in S} q_i . k_j).

q must already carry the 1/sqrt(p) scale. Never registered, never profiled.
"""

from __future__ import annotations

import torch


def skein_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    pilot_pos: torch.Tensor,
    columns: torch.Tensor,
    d: torch.Tensor,
) -> torch.Tensor:
    """q, k, v (B, H, T, P); mask (B, T) or None; pilot_pos (B, S); columns (B, H, S); d (B,)."""
    B, H, T, P = q.shape
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    out = torch.zeros_like(v)
    for b in range(B):
        keys = [j for j in range(T) if real[b, j]]
        if not keys:
            continue
        db = int(d[b])
        pilots = {int(t) for t in pilot_pos[b, :db]}
        for h in range(H):
            sample = [int(j) for j in columns[b, h, :db]]
            assert len(set(sample)) == db, "columns must be drawn without replacement"
            assert all(real[b, j] for j in sample), "a padded column was sampled"
            unsampled = [j for j in keys if j not in sample]
            for i in range(T):
                if i in pilots:
                    logits = torch.stack([q[b, h, i] @ k[b, h, j] for j in keys])
                    probs = torch.softmax(logits, dim=0)
                    out[b, h, i] = sum(p * v[b, h, j] for p, j in zip(probs, keys))
                    continue
                logits = torch.stack([q[b, h, i] @ k[b, h, j] for j in sample])
                e = torch.exp(logits)
                g = torch.exp(logits.mean())
                num = sum(ej * v[b, h, j] for ej, j in zip(e, sample))
                num = num + g * sum((v[b, h, j] for j in unsampled), torch.zeros(P, dtype=v.dtype))
                den = e.sum() + g * len(unsampled)
                out[b, h, i] = num / den
    return out

"""Chunked decayed linear attention: the shared core of ``mamba2``, ``retnet`` and ``gla``.

All three mix tokens with the same causal recurrence over a per-head state S (K x V)::

    S_t = diag(g_t) S_{t-1} + k_t^T v_t,        o_t = q_t S_t

with a decay g_t in (0, 1]: one scalar per head and step (Mamba-2's SSD, RetNet's fixed gamma)
or one value per key channel (GLA). Callers pass ``log_g = log g`` (<= 0). Unrolled,
``o_t = sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s v_s`` with G the cumulative sum of log_g.

The fast path is chunked (chunk C): inside a chunk the C x C matrix of decayed scores, across
chunks the state passed chunk to chunk by a scan over T/C steps. No T x T tensor is formed and
every exponent taken is <= 0 (no overflow), except where stated for the per-channel case:

* scalar decay: ``exp(G_i - G_j)`` for j <= i is a C x C matrix per head;
* per-channel decay: the C x C x K tensor would be large, so the chunk is cut into sub-chunks of
  s tokens (GLA's secondary chunking): between sub-chunks, queries and keys are rescaled against
  the boundary where the query's sub-chunk starts (both factors <= 1) and multiplied as matrices;
  inside a sub-chunk, the s x s x K tensor of exact decays is formed in log space.

Padding: the callers zero k and v and set log_g = 0 at padded tokens, so a padded token neither
writes to the state nor decays it (the state passes through it unchanged).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from zoo.functional import chunks_of

__all__ = [
    "bidirectional_scan",
    "chunked_decay_attention",
    "chunked_channel_decay_attention",
    "decay_scan_flops",
    "mask_scan_inputs",
    "masked_exp",
    "records_graph",
]


def _pad_time(t: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Zero-pad ``pad`` steps at the end of time axis ``dim`` (2 for (B, H, T, ...))."""
    if pad == 0:
        return t
    widths = [0, 0] * (t.dim() - 1 - dim) + [0, pad]
    return F.pad(t, widths)


def _chunk_state_scan(states: torch.Tensor, chunk_decay: torch.Tensor) -> torch.Tensor:
    """State entering each chunk: P_0 = 0, P_{n+1} = decay_n * P_n + states_n.

    states (B, H, N, K, V) = each chunk's own contribution at its end; chunk_decay (B, H, N, K, 1)
    or (B, H, N, 1, 1) = the chunk's total decay. A scan over N = T / C steps (linear in T; the
    N x N matrix form would be quadratic in T). Returns (B, H, N, K, V).
    """
    # unbind once: indexing chunk n inside the loop makes autograd build a full-size zero
    # gradient per chunk (select_backward), quadratic in T in the training step
    own, decays = states.unbind(2), chunk_decay.unbind(2)  # N x (B, H, K, V), N x (B, H, K or 1, 1)
    prefix = [torch.zeros_like(own[0])]  # (B, H, K, V)
    for n in range(len(own) - 1):
        prefix.append(prefix[-1] * decays[n] + own[n])
    return torch.stack(prefix, dim=2)  # (B, H, N, K, V)


def masked_exp(log_ratio: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``exp(log_ratio)`` with 0 where ``drop`` (a causal decay matrix). ``log_ratio`` must be a
    fresh tensor: it is overwritten. The dropped entries are set to 0 *before* the exp and zeroed
    after it, never exp'd as -inf: on CPU, exp is about 10x slower on lanes that underflow (-inf
    included) than on ordinary ones (82 vs 7 us for a 4 x 64 x 64 causal matrix, one core)."""
    e = log_ratio.masked_fill_(drop, 0.0).exp_()  # (..): 1 where dropped
    # out of place when autograd records: exp_'s backward reads its own output
    return e.masked_fill(drop, 0.0) if e.requires_grad else e.masked_fill_(drop, 0.0)


def records_graph(*tensors: torch.Tensor) -> bool:
    """True when autograd records this call (or torch.compile traces it): the batched form,
    whose graph is a few large ops. Otherwise an inference loop is used (this module's chunk loop,
    the delta rule's state pass)."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _chunk_loop_decay_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor, chunk: int
) -> torch.Tensor:
    """:func:`chunked_decay_attention` without autograd: chunk by chunk, the running state
    updated in place. The same arithmetic; no (N, C, C) or (N, K, V) tensor is held, so each
    chunk's working set stays in cache. A decay fixed along time (``log_g`` expanded over T with
    stride 0, as RetNet's gamma) has the same decays in every chunk: they are computed once."""
    B, H, T, V = v.shape
    K = q.shape[-1]
    out = torch.empty(B, H, T, V, dtype=v.dtype, device=v.device)  # (B, H, T, V)
    state = v.new_zeros(B, H, K, V)  # (B, H, K, V): the state entering the chunk
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=v.device).triu(1)  # [i, j]: j > i
    fixed = T > 1 and log_g.stride(2) == 0
    cached = None

    def decays(G: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """G (B, H, c): in-chunk cumulative log decay -> the chunk's decay factors."""
        c = G.shape[-1]
        G_last = G[..., -1:]  # (B, H, 1)
        return (masked_exp(G[..., :, None] - G[..., None, :], future[:c, :c]),  # (B, H, c, c): i <- j
                G.exp()[..., None],  # (B, H, c, 1): from the chunk start to i
                (G_last - G).exp()[..., None],  # (B, H, c, 1): from j to the chunk end
                G_last.exp()[..., None])  # (B, H, 1, 1): over the whole chunk

    for start in range(0, T, chunk):
        s = slice(start, min(T, start + chunk))
        full = s.stop - s.start == chunk
        if fixed and full:
            cached = cached or decays(log_g[:, :, s].cumsum(-1))
            within, to_query, to_end, over = cached
        else:
            within, to_query, to_end, over = decays(log_g[:, :, s].cumsum(-1))
        qn, kn, vn = q[:, :, s], k[:, :, s], v[:, :, s]  # (B, H or 1, c, K), (B, H or 1, c, K), (B, H, c, V)
        scores = torch.matmul(qn, kn.transpose(-1, -2)) * within  # (B, H, c, c)
        o = torch.matmul(scores, vn)  # (B, H, c, V)
        o += torch.matmul(qn * to_query, state)  # the prefix, decayed to each query
        out[:, :, s] = o
        state.mul_(over).add_(torch.matmul((kn * to_end).transpose(-1, -2), vn))
    return out


def chunked_decay_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """Causal ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s`` with a scalar decay per head.

    q, k (B, H, T, K) or (B, 1, T, K) (shared by the heads, as Mamba-2's C and B: their scores
    are then computed once), v (B, H, T, V), log_g (B, H, T) (<= 0). Returns (B, H, T, V).
    Time O(T·C·(K + V) + T·K·V), memory O(T·C + (T/C)·K·V) per head.
    """
    if not records_graph(q, k, v, log_g):
        return _chunk_loop_decay_attention(q, k, v, log_g, chunk)
    B, H, T, V = v.shape
    K = q.shape[-1]
    N, pad = chunks_of(T, chunk)
    q, k, v = (_pad_time(t, pad, 2) for t in (q, k, v))  # (B, H or 1, Tp, .)
    log_g = _pad_time(log_g, pad, 2)  # (B, H, Tp)
    qc = q.reshape(B, q.shape[1], N, chunk, K)  # (B, H or 1, N, C, K)
    kc = k.reshape(B, k.shape[1], N, chunk, K)  # (B, H or 1, N, C, K)
    vc = v.reshape(B, H, N, chunk, V)  # (B, H, N, C, V)
    G = log_g.reshape(B, H, N, chunk).cumsum(-1)  # (B, H, N, C): decay from chunk start to i
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    decay = masked_exp(G[..., :, None] - G[..., None, :], future)  # (B, H, N, C, C)
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * decay  # (B, H or 1, N, C, C) * (B, H, N, C, C)
    G_last = G[..., -1:]  # (B, H, N, 1)
    k_to_end = kc * (G_last - G).exp()[..., None]  # (B, H, N, C, K): decayed to the chunk end
    states = torch.matmul(k_to_end.transpose(-1, -2), vc)  # (B, H, N, K, V)
    prefix = _chunk_state_scan(states, G_last.exp()[..., None])  # (B, H, N, K, V)
    q_from_start = qc * G.exp()[..., None]  # (B, H, N, C, K)
    out = torch.matmul(scores, vc) + torch.matmul(q_from_start, prefix)  # (B, H, N, C, V)
    return out.reshape(B, H, N * chunk, -1)[:, :, :T]  # (B, H, T, V)


def _sub_chunk_scores(qc: torch.Tensor, kc: torch.Tensor, G: torch.Tensor, sub: int) -> torch.Tensor:
    """Intra-chunk scores ``A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)`` for j <= i, (B, H, N, C, C).

    qc, kc, G: (B, H, N, C, K), G the in-chunk cumulative log decay. Sub-chunks of ``sub`` tokens.
    """
    B, H, N, C, K = qc.shape
    S = C // sub
    qs = qc.reshape(B, H, N, S, sub, K)  # (B, H, N, S, s, K)
    ks = kc.reshape(B, H, N, S, sub, K)  # (B, H, N, S, s, K)
    Gs = G.reshape(B, H, N, S, sub, K)  # (B, H, N, S, s, K)
    # boundary where sub-chunk a starts: G at the last token of sub-chunk a - 1 (0 for a = 0)
    ref = torch.cat([torch.zeros_like(Gs[:, :, :, :1, -1]), Gs[:, :, :, :-1, -1]], dim=3)  # (B, H, N, S, K)
    q_hat = qs * (Gs - ref[..., None, :]).exp()  # (B, H, N, S, s, K): G_i <= ref_a
    earlier = torch.ones(S, S, dtype=torch.bool, device=qc.device).tril(-1)  # [a, b]: b < a
    # key j in sub-chunk b decayed to the start of sub-chunk a: exp(ref_a - G_j) <= 1 for b < a
    # (in-place masking and exp on fresh differences: their backward needs only the exp's output;
    # dropped entries are exp(0) = 1 here, zeroed in the product, never exp(-inf): see masked_exp)
    drop = ~earlier[:, :, None, None]  # (S_a, S_b, 1, 1)
    gap = ref[:, :, :, :, None, None, :] - Gs[:, :, :, None, :, :, :]  # (B, H, N, S_a, S_b, s, K)
    gap = gap.masked_fill_(drop, 0.0).exp_()
    k_hat = (ks[:, :, :, None] * gap).masked_fill_(drop, 0.0)  # (B, H, N, S_a, S_b, s, K), zero for b >= a
    cross = torch.einsum("bhnaik,bhnacjk->bhnaicj", q_hat, k_hat)  # (B, H, N, S, s, S, s)
    # inside a sub-chunk: the exact s x s x K decays, in log space
    causal = torch.ones(sub, sub, dtype=torch.bool, device=qc.device).tril()
    within = Gs[..., :, None, :] - Gs[..., None, :, :]  # (B, H, N, S, s_i, s_j, K)
    later = ~causal[:, :, None]  # (s_i, s_j, 1): j > i
    within = within.masked_fill_(later, 0.0).exp_()
    diag = torch.matmul((within * ks[..., None, :, :]).masked_fill_(later, 0.0), qs[..., None]).squeeze(-1)  # (B, H, N, S, s_i, s_j)
    eye = torch.eye(S, dtype=qc.dtype, device=qc.device)  # [a, b]
    full = cross + diag[..., :, :, None, :] * eye[:, None, :, None]  # (B, H, N, S, s, S, s)
    return full.reshape(B, H, N, C, C)


def chunked_channel_decay_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_g: torch.Tensor,
    chunk: int = 64,
    sub_chunk: int = 16,
) -> torch.Tensor:
    """Causal ``o_t = sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s v_s`` with a decay per key channel.

    q, k, log_g (B, H, T, K) (log_g <= 0), v (B, H, T, V); ``sub_chunk`` divides ``chunk``.
    Returns (B, H, T, V). Time O(T·C·(K + V) + T·s·K + T·K·V) per head; the largest
    intermediates hold T·s·K (inside sub-chunks) and T·(C/s)·K (between them) elements per head.
    """
    B, H, T, K = q.shape
    N, pad = chunks_of(T, chunk)
    q, k, v, log_g = (_pad_time(t, pad, 2) for t in (q, k, v, log_g))  # (B, H, Tp, .)
    qc = q.reshape(B, H, N, chunk, K)  # (B, H, N, C, K)
    kc = k.reshape(B, H, N, chunk, K)  # (B, H, N, C, K)
    vc = v.reshape(B, H, N, chunk, v.shape[-1])  # (B, H, N, C, V)
    G = log_g.reshape(B, H, N, chunk, K).cumsum(3)  # (B, H, N, C, K)
    scores = _sub_chunk_scores(qc, kc, G, sub_chunk)  # (B, H, N, C, C)
    G_last = G[:, :, :, -1:]  # (B, H, N, 1, K)
    k_to_end = kc * (G_last - G).exp()  # (B, H, N, C, K)
    states = torch.matmul(k_to_end.transpose(-1, -2), vc)  # (B, H, N, K, V)
    prefix = _chunk_state_scan(states, G_last.exp().transpose(-1, -2))  # (B, H, N, K, V)
    out = torch.matmul(scores, vc) + torch.matmul(qc * G.exp(), prefix)  # (B, H, N, C, V)
    return out.reshape(B, H, N * chunk, -1)[:, :, :T]  # (B, H, T, V)


def mask_scan_inputs(
    mask: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded tokens neither write (k = v = 0) nor decay (log_g = 0) the state.

    mask (B, T) bool or None; k, v (B, H, T, .); log_g (B, H, T) or (B, H, T, K).
    """
    if mask is None:
        return k, v, log_g
    keep = mask[:, None, :]  # (B, 1, T)
    keep4 = keep[..., None].to(k.dtype)  # (B, 1, T, 1)
    log_g = log_g * (keep if log_g.dim() == 3 else keep[..., None]).to(log_g.dtype)
    return k * keep4, v * keep4, log_g


def bidirectional_scan(
    core: Callable[..., torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_g: torch.Tensor,
    **kwargs,
) -> torch.Tensor:
    """Forward scan + backward scan (the same core on the time-reversed inputs), token i counted once.

    For j > i the backward scan weighs k_j v_j by the decays of tokens i .. j-1; the diagonal term
    (q_i . k_i) v_i, present in both scans, is subtracted once. Shapes as the core's; time axis 2.
    """
    forward = core(q, k, v, log_g, **kwargs)  # (B, H, T, V)
    flip = lambda t: t.flip(2)  # noqa: E731 (time axis of (B, H, T, ...))
    backward = flip(core(flip(q), flip(k), flip(v), flip(log_g), **kwargs))  # (B, H, T, V)
    self_term = (q * k).sum(-1, keepdim=True) * v  # (B, H, T, V)
    return forward + backward - self_term


def decay_scan_flops(
    B: int, T: int, heads: int, k: int, v: int, chunk: int, causal: bool, qk_heads: int | None = None
) -> float:
    """Analytic FLOPs of :func:`chunked_decay_attention` (key width k, value width v per head):
    intra-chunk scores (once per q/k head: ``qk_heads``, default ``heads``) and their product
    with v, chunk states, queries against the passed state; twice when bidirectional."""
    Tp = -(-T // chunk) * chunk
    qk_heads = heads if qk_heads is None else qk_heads
    one = 2.0 * B * Tp * (qk_heads * chunk * k + heads * (chunk * v + 2 * k * v))
    return one if causal else 2.0 * one

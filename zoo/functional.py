"""Shared pure helpers for the mixers (no modules, no state). Everything here is public.

Shapes: (B, T, D) at the mixer boundary; (B, H, T, P) inside attention-like mixers, P = D / H.
Masks are bool (B, T), True = real token; additive biases are built here, with finite
negatives so a fully masked row never turns into NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

def neg_value(dtype: torch.dtype) -> float:
    """A finite "minus infinity" for additive masks, safe to add to any logit in ``dtype``."""
    return torch.finfo(dtype).min / 2


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, T, H*P) -> (B, H, T, P)
    return rearrange(t, "b t (h p) -> b h t p", h=heads)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    # (B, H, T, P) -> (B, T, H*P)
    return rearrange(t, "b h t p -> b t (h p)")


def chunks_of(T: int, chunk: int) -> tuple[int, int]:
    """(N, pad): ``N = ceil(T / chunk)`` chunks and the ``pad = N * chunk - T`` steps that fill the
    last one. One rule for every chunked mixer, written so that under ``torch.compile(dynamic=True)``
    the padded length stays ``N * chunk`` of a simple symbol: ``(-T) % chunk`` made every later shape
    a nested modulo of T, and dynamo's symbolic reasoning about them took 3x as long (gla, one
    frame on the 2-core VM: 13.5 s, against 4.9 s)."""
    n = (T + chunk - 1) // chunk
    return n, n * chunk - T


def pad_to_multiple(
    x: torch.Tensor, mask: torch.Tensor | None, multiple: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-pad (B, T, D) with zero rows to a multiple of ``multiple``; the new rows are masked.

    Returns (x_padded, mask_padded). ``mask_padded`` is None only when no padding was needed and
    ``mask`` was None. The caller slices outputs back to T; the padding cost is the mixer's.
    """
    B, T, _ = x.shape
    _, pad = chunks_of(T, multiple)
    if pad == 0:
        return x, mask
    x = F.pad(x, (0, 0, 0, pad))  # (B, T + pad, D)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
    mask = F.pad(mask, (0, pad), value=False)  # (B, T + pad)
    return x, mask


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias (B, 1, 1, T): 0 for real keys, a finite large negative for padded ones."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask, neg_value(dtype))
    return bias[:, None, None, :]  # (B, 1, 1, T)


def safe_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """Key mask where a fully padded sequence lets every key through.

    Such a sequence's outputs are zeroed afterwards (C2); attending uniformly instead of over an
    empty set keeps the softmax finite (C4) without a second code path.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fused softmax attention. q, k, v: (B, H, T, P); mask bool (B, T) over keys.

    ``dropout_p``: dropout on the attention weights (the caller passes 0 outside training).
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, dropout_p=dropout_p)
    keys = safe_key_mask(mask)[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        T = q.shape[-2]
        tril = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        # The diagonal is always allowed, so a query whose past is all padding stays finite.
        keys = (keys & tril) | torch.eye(T, dtype=torch.bool, device=q.device)  # (B, 1, T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scale, dropout_p=dropout_p)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention with the (B, H, T, T) matrix materialised (the papers' baseline).

    The softmax runs in fp32 for half inputs, as the fused kernels do internally.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, T)
    T = q.shape[-2]
    if mask is not None:
        scores = scores.masked_fill(~safe_key_mask(mask)[:, None, None, :], neg_value(scores.dtype))
    if causal:
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, neg_value(scores.dtype))
    # fp32 softmax for half inputs; fp32/fp64 stay as they are
    acc = torch.promote_types(scores.dtype, torch.float32)
    probs = torch.softmax(scores, dim=-1, dtype=acc).to(v.dtype)  # (B, H, T, T)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)  # (B, H, T, T), training only (the caller decides)
    return torch.matmul(probs, v)  # (B, H, T, P)


def masked_mean(t: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean over real positions along ``dim`` (mask broadcastable to t); zero when none is real."""
    if mask is None:
        return t.mean(dim=dim)
    weights = mask.to(t.dtype)
    total = (t * weights).sum(dim=dim)
    count = weights.sum(dim=dim).clamp_min(1.0)
    return total / count


def linear_flops(batch: int, length: int, d_in: int, d_out: int, count: int = 1) -> float:
    """FLOPs of ``count`` dense projections (B*T, d_in) @ (d_in, d_out), multiply-add = 2."""
    return 2.0 * batch * length * d_in * d_out * count


def log2_ceil(n: int) -> int:
    return max(0, math.ceil(math.log2(max(n, 1))))


# --- linear attention, URPE, SimpleRMSNorm (transnormer, transnormer_diag; reused by performer) ---


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least fp32: the dtype for fragile sums (fp64 stays fp64, half types go to fp32)."""
    return torch.promote_types(dtype, torch.float32)


class _ExclusiveCumsum(torch.autograd.Function):
    """y[:, :, n] = sum_{m < n} x[:, :, m] along dim 2, as a loop of slice additions.

    torch.cumsum along a middle axis is several times slower on CPU than this copy-speed loop;
    the backward is the reversed loop (a suffix sum).
    """

    @staticmethod
    def forward(ctx, x):
        y = torch.empty_like(x)
        y[:, :, 0].zero_()
        for n in range(1, x.shape[2]):
            torch.add(y[:, :, n - 1], x[:, :, n - 1], out=y[:, :, n])
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        dx = torch.empty_like(g)
        N = g.shape[2]
        dx[:, :, N - 1].zero_()
        for n in range(N - 2, -1, -1):
            torch.add(dx[:, :, n + 1], g[:, :, n + 1], out=dx[:, :, n])
        return dx


def prefer_scan(device: torch.device) -> bool:
    """True where a prefix sum should be one scan kernel rather than a loop of small kernels.

    On a GPU a loop of N slice additions is N launches (launch-bound for N in the hundreds); on the
    CPU the copy-speed loop is faster than ``torch.cumsum`` along a middle axis.
    """
    return device.type != "cpu"


def exclusive_cumsum(x: torch.Tensor, scan: bool | None = None) -> torch.Tensor:
    """Exclusive prefix sum along dim 2 of a (B, H, N, ...) tensor (differentiable).

    ``scan``: True = ``torch.cumsum`` (one kernel), False = the slice loop; None picks by device
    (:func:`prefer_scan`). Both give the same sums (up to rounding).
    """
    if scan is None:
        scan = prefer_scan(x.device)
    if not scan:
        return _ExclusiveCumsum.apply(x)
    pad = [0, 0] * (x.dim() - 3) + [1, 0]  # one zero slice in front along dim 2
    return F.pad(torch.cumsum(x.narrow(2, 0, x.shape[2] - 1), dim=2), pad)  # (B, H, N, ...)


def causal_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk: int = 64,
    normalizer: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal (unnormalised) linear attention ``o_t = q_t · sum_{s<=t} k_s^T v_s`` in O(T) memory.

    q, k: (B, H, T, R) feature maps (e.g. phi(Q), phi(K); R = feature width), v: (B, H, T, P).
    Returns the numerator (B, H, T, P); with ``normalizer=True`` also the normaliser
    ``z_t = q_t · sum_{s<=t} k_s`` (B, H, T), so ``num / z[..., None]`` is normalised linear
    attention (Performer-style). The caller masks padded keys (zero rows of k and v) beforehand.

    Chunked prefix sums: within each chunk of ``chunk`` tokens a masked (chunk x chunk) quadratic
    term, across chunks the exclusive cumulative sum of per-chunk states k^T v (R x P). Time
    O(T·chunk·(R + P) + T·R·P), memory O(T·chunk + (T/chunk)·R·P); no T x T matrix is formed.
    Runs in the inputs' dtype: upcast half inputs first (cumulative sums).
    """
    B, H, T, R = q.shape
    P = v.shape[-1]
    N, pad = chunks_of(T, chunk)
    if pad:
        # zero rows: padded keys/values add nothing, padded queries are sliced off
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, N * chunk, .)
    qc = q.reshape(B, H, N, chunk, R)  # (B, H, N, C, R)
    kc = k.reshape(B, H, N, chunk, R)  # (B, H, N, C, R)
    vc = v.reshape(B, H, N, chunk, P)  # (B, H, N, C, P)
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    # in-place updates of fresh products (their backward needs only the inputs): fewer buffers
    scores = torch.matmul(qc, kc.transpose(-1, -2)).masked_fill_(future, 0.0)  # (B, H, N, C, C)
    states = torch.matmul(kc.transpose(-1, -2), vc)  # (B, H, N, R, P)
    prefix = exclusive_cumsum(states)  # (B, H, N, R, P): state entering chunk n = chunks 0..n-1
    out = torch.matmul(scores, vc).add_(torch.matmul(qc, prefix))  # (B, H, N, C, P)
    out = out.reshape(B, H, N * chunk, P)[:, :, :T]  # (B, H, T, P)
    if not normalizer:
        return out
    ksum = kc.sum(dim=-2)  # (B, H, N, R)
    kprefix = torch.cumsum(ksum, dim=2).sub_(ksum)  # (B, H, N, R)
    z = scores.sum(dim=-1) + torch.matmul(qc, kprefix.unsqueeze(-1)).squeeze(-1)  # (B, H, N, C)
    return out, z.reshape(B, H, N * chunk)[:, :, :T]  # (B, H, T)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional unnormalised linear attention ``q (k^T v)``: q, k (B, H, T, R), v (B, H, T, P)."""
    kv = torch.matmul(k.transpose(-1, -2), v)  # (B, H, R, P)
    return torch.matmul(q, kv)  # (B, H, T, P)


def simple_rms_norm(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SimpleRMSNorm over the last axis, no gain: ``z / (||z||_2 / sqrt(D) + eps)``.

    eps is added to the RMS (not under the root), as in TransNormer; a zero row stays zero and
    its gradient stays finite. Computed in at least fp32, returned in z's dtype.
    """
    zc = z.to(compute_dtype(z.dtype))
    rms = torch.linalg.vector_norm(zc, dim=-1, keepdim=True) * z.shape[-1] ** -0.5  # (..., 1)
    return (zc / (rms + eps)).to(z.dtype)


def householder(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(I - 2 u u^T) z`` along the last axis; u (P,) a unit vector, z (..., P)."""
    return z - 2.0 * (z @ u).unsqueeze(-1) * u  # (..., P)


def rotary_interleaved(z: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of z (..., T, P) by angle ``positions[t] * theta[i]``.

    positions (T,), theta (P/2,). Angles and the rotation run in at least fp32, as one complex
    product per pair (channel 2i is the real part, 2i+1 the imaginary part).
    """
    dt = compute_dtype(z.dtype)
    angles = positions.to(dt)[:, None] * theta.to(dt)[None, :]  # (T, P/2)
    rot = torch.polar(torch.ones_like(angles), angles)  # (T, P/2) complex, e^{i angle}
    zc = torch.view_as_complex(z.to(dt).reshape(*z.shape[:-1], -1, 2).contiguous())  # (..., T, P/2)
    return torch.view_as_real(zc * rot).flatten(-2).to(z.dtype)  # (..., T, P)


def urpe(z: torch.Tensor, u: torch.Tensor, theta: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Unitary relative positional encoding (TransNormer): ``Rot_t(H z_t)``, H = I - 2 u u^T.

    z (..., T, P); u (P,) unit Householder vector; theta (P/2,) rotary frequencies; positions (T,).
    Both maps are orthogonal and Rot is relative, so <URPE(q)_s, URPE(k)_t> depends on t - s only.
    """
    return rotary_interleaved(householder(z, u.to(z.dtype)), positions, theta)


def rotary_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i / head_dim), i = 0 .. head_dim/2 - 1, in float64 (the RoPE init)."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


# --- block attention, grid pooling, successive-halving top-k (poolingformer, pyramidion, pyramidion_block) ---


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention inside non-overlapping blocks of ``block_size`` tokens (fused SDPA).

    q, k, v: (B, H, T, P) with T a multiple of ``block_size``; mask bool (B, T) over keys.
    Each block is an independent batch element; a fully padded block attends uniformly (its rows
    are padding and get zeroed by the caller); causal = lower-triangular inside each block.
    Returns (B, H, T, P).
    """
    B, H, T, P = q.shape
    if T % block_size:
        raise ValueError(f"block_attention: T={T} is not a multiple of block_size={block_size}")
    nb = T // block_size

    def to_blocks(t: torch.Tensor) -> torch.Tensor:
        # (B, H, T, P) -> (B, T, H, P) -> (B*nb, c, H, P) -> (B*nb, H, c, P); views when t comes
        # from split_heads of a (B, T, D) projection
        return t.transpose(1, 2).reshape(B * nb, block_size, H, P).transpose(1, 2)

    block_mask = None if mask is None else mask.reshape(B * nb, block_size)  # (B*nb, c)
    o = sdpa_attention(to_blocks(q), to_blocks(k), to_blocks(v), block_mask, causal, dropout_p=dropout_p)  # (B*nb, H, c, P)
    return o.transpose(1, 2).reshape(B, T, H, P).transpose(1, 2)  # (B, H, T, P)


def grid_offset(kernel: int, stride: int) -> int:
    """off = floor((kernel - stride) / 2): slot u covers positions [u*stride - off, u*stride - off + kernel)."""
    return (kernel - stride) // 2


def grid_slot_count(T: int, kernel: int, stride: int) -> int:
    """Number of grid slots u >= 0 whose window starts inside [0, T) (at least 1).

    Every slot that can hold a position of a length-T sequence exists, so appending padding only
    adds empty slots (padding invariance also for overlapping kernels, kernel > stride).
    """
    off = grid_offset(kernel, stride)
    return max(1, -(-(T + off) // stride))


def grid_windows(
    t: torch.Tensor, mask: torch.Tensor | None, kernel: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid windows of a (B, T, C) sequence, anchored at position 0.

    Returns (windows (B, K, C, kernel), real (B, K, kernel) bool), K = grid_slot_count(T, ...).
    Positions outside [0, T) and padded positions are zero rows with real = False.
    """
    B, T, C = t.shape
    K = grid_slot_count(T, kernel, stride)
    off = grid_offset(kernel, stride)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=t.device)
    t = t * mask.unsqueeze(-1).to(t.dtype)  # pads contribute zeros
    # index 0 of the padded sequence is position -off; F.pad crops when an amount is negative
    right = (K - 1) * stride + kernel - off - T
    t = F.pad(t, (0, 0, off, right))  # (B, (K-1)*stride + kernel, C)
    m = F.pad(mask, (off, right), value=False)  # (B, (K-1)*stride + kernel)
    windows = t.unfold(1, kernel, stride)  # (B, K, C, kernel)
    real = m.unfold(1, kernel, stride)  # (B, K, kernel)
    return windows, real


def grid_pool(
    t: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: int,
    stride: int,
    mode: str,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool a (B, T, C) sequence onto the fixed grid anchored at 0, over real positions only.

    mode: ``mean`` (average of the real positions), ``max`` (channel max over real positions),
    ``weighted`` (sum of kernel taps times ``weight``; pads contribute 0). ``weight`` is either
    static (C, kernel) (depthwise convolution) or dynamic (B, K, G, kernel) (per-slot weights
    shared by each of G channel groups, lightweight dynamic convolution).
    Returns (pooled (B, K, C), slot_real (B, K) bool); a slot with no real position is a zero row.
    """
    windows, real = grid_windows(t, mask, kernel, stride)  # (B, K, C, kernel), (B, K, kernel)
    slot_real = real.any(dim=-1)  # (B, K)
    if mode == "mean":
        count = real.sum(dim=-1, keepdim=True).clamp_min(1).to(t.dtype)  # (B, K, 1)
        pooled = windows.sum(dim=-1) / count  # (B, K, C)
    elif mode == "max":
        filled = windows.masked_fill(~real[:, :, None, :], neg_value(t.dtype))  # (B, K, C, kernel)
        pooled = filled.amax(dim=-1).masked_fill(~slot_real[..., None], 0.0)  # (B, K, C)
    elif mode == "weighted":
        if weight is None:
            raise ValueError("grid_pool: mode 'weighted' needs a weight")
        if weight.dim() == 2:  # (C, kernel) depthwise filter
            pooled = (windows * weight).sum(dim=-1)  # (B, K, C)
        else:  # (B, K, G, kernel) dynamic, one row per channel group
            B, K, C, _ = windows.shape
            G = weight.shape[2]
            grouped = windows.reshape(B, K, G, C // G, kernel)  # (B, K, G, C/G, kernel)
            pooled = (grouped * weight.unsqueeze(3)).sum(dim=-1).reshape(B, K, C)  # (B, K, C)
    else:
        raise ValueError(f"grid_pool: mode: expected 'mean', 'max' or 'weighted', got {mode!r}")
    return pooled, slot_real


def pooled_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_real: torch.Tensor,
    kernel: int,
    stride: int,
    window: int,
    block: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of every query to the pooled grid slots whose centre lies within window/2.

    q: (B, H, T, P); k, v: (B, H, K, P) pooled on the grid of :func:`grid_pool`; slot_real (B, K).
    Query i attends slot u iff slot u is real and |c_u - i| <= window / 2, with the slot centre
    c_u = u*stride - off + (kernel - 1)/2 (tested in doubled integers). A query without any such
    slot gets a zero row. Queries are processed in blocks of ``block`` (a multiple of ``stride``)
    aligned with the grid: every block shares one candidate range of S consecutive slots (a
    strided view of the padded slots) and the exact rule is a (block, S) mask, so the scores are
    (B, H, T, S) with S ~ (block + window) / stride, never (T, K). Returns (B, H, T, P).
    ``dropout_p``: dropout on the slot weights (the caller passes 0 outside training).
    """
    B, H, T, P = q.shape
    K = k.shape[2]
    scale = P**-0.5 if scale is None else scale
    off = grid_offset(kernel, stride)
    if block is None:
        block = stride * max(1, -(-window // (2 * stride)))  # about window / 2
    if block % stride:
        raise ValueError(f"pooled_window_attention: block={block} is not a multiple of stride={stride}")
    step = block // stride  # slots per query block
    # 2*c_u - 2*i = 2*stride*u + shift - 2*i with shift = kernel - 1 - 2*off
    shift = kernel - 1 - 2 * off
    u_first = -((window + shift) // (2 * stride))  # ceil((-window - shift) / (2 stride)): first slot of query 0
    u_last = (2 * (block - 1) + window - shift) // (2 * stride)  # last slot of query block - 1
    S = u_last - u_first + 1
    nb = -(-T // block)
    Tq = nb * block
    total = (nb - 1) * step + S  # slots u_first .. u_first + total - 1
    pad = (0, 0, -u_first, total - K + u_first)  # F.pad crops where negative

    if Tq > T:
        q = F.pad(q, (0, 0, 0, Tq - T))  # (B, H, Tq, P)
    q = q.reshape(B, H, nb, block, P)  # (B, H, nb, Q, P)
    kw = F.pad(k, pad).unfold(2, S, step)  # (B, H, nb, P, S)
    vw = F.pad(v, pad).unfold(2, S, step)  # (B, H, nb, P, S)
    real = F.pad(slot_real, pad[2:], value=False).unfold(1, S, step)  # (B, nb, S)

    r = torch.arange(block, device=q.device)[:, None]  # (Q, 1) query offset in the block
    j = torch.arange(S, device=q.device)[None, :]  # (1, S) candidate slot offset
    near = (2 * stride * (u_first + j) + shift - 2 * r).abs() <= window  # (Q, S)
    allowed = near & real[:, :, None, :]  # (B, nb, Q, S)

    # a query with no allowed slot spreads its weight uniformly over masked slots: zero its row
    has_any = allowed.any(dim=-1)[:, None, :, :, None].to(q.dtype)  # (B, 1, nb, Q, 1)
    fdt = torch.promote_types(q.dtype, torch.float32)
    # chunks of query blocks keep each chunk's scores cache-sized (~4 MB), so the time per token
    # does not grow with T; each chunk's slices of the strided windows are copied by matmul
    chunk = max(1, (1 << 20) // (B * H * block * S))
    outs = []
    for c0 in range(0, nb, chunk):
        c1 = min(nb, c0 + chunk)
        scores = torch.matmul(q[:, :, c0:c1] * scale, kw[:, :, c0:c1])  # (B, H, n, Q, S)
        scores.masked_fill_(~allowed[:, None, c0:c1], neg_value(scores.dtype))  # in place: one pass fewer
        probs = torch.softmax(scores, dim=-1, dtype=fdt).to(v.dtype)  # (B, H, n, Q, S)
        if dropout_p:
            probs = F.dropout(probs, dropout_p)  # (B, H, n, Q, S), training only (the caller decides)
        out = torch.matmul(probs, vw[:, :, c0:c1].transpose(-1, -2))  # (B, H, n, Q, P)
        outs.append(out * has_any[:, :, c0:c1])
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, H, nb, Q, P)
    return out.reshape(B, H, Tq, P)[:, :, :T]  # (B, H, T, P)


def halving_rounds(L: int, k: int) -> int:
    """R = ceil(log2(L / k)) (0 when L <= k): the successive-halving rounds from L to k tokens."""
    R = 0
    while (k << R) < L:
        R += 1
    return R


def successive_halving_topk(
    x: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    mask: torch.Tensor | None = None,
    *,
    base: float = 20.0,
    flip: bool = True,
    sort_back: bool = False,
    hard: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable top-k by successive halving (Pietruszka et al., AAAI 2021), batched.

    x: (B, L, D) token vectors; scores: (B, L) (the paper's are sigmoid + 1e-5, in (0, 1]);
    mask: bool (B, L), True = real token. Returns (pooled (B, k, D), pooled_scores (B, k),
    pooled_mask (B, k)).

    Any L and k >= 1: the sequence is padded with masked tokens to L' = k * 2^R, R = ceil(log2(L/k)),
    then R rounds each halve it: tokens are ranked by score (stable sort, ties by index; masked
    tokens always last), the best half is paired with the worst half (``flip``: best with
    worst; else t-th with (L/2+t)-th), and each pair (a, c) merges to w_a x_a + w_c x_c with
    (w_a, w_c) = softmax(base^{s_a}, base^{s_c}); scores merge alike. A masked token always
    loses its pair with weight exactly 0, so it never reaches the output while a real token is
    left; the pooled mask is the keep-mask pushed through the same weights (real iff mass > 1/2),
    so with N real tokens min(N, k) outputs are real. Rows whose mask is False are zero.
    ``sort_back`` orders each round's winners by position instead of rank. ``hard`` selects the
    k highest-scoring real tokens exactly (the beta -> infinity limit; no gradient to scores).
    With L <= k nothing is merged: the tokens come back in order, padded to k.
    """
    B, L, D = x.shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"successive_halving_topk: k: expected an integer >= 1, got {k!r}")
    if tuple(scores.shape) != (B, L):
        raise ValueError(f"successive_halving_topk: scores: expected shape ({B}, {L}), got {tuple(scores.shape)}")
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=x.device)
    R = halving_rounds(L, k)
    Lp = k << R
    dtype = torch.promote_types(x.dtype, torch.float32)  # scores and pair weights in >= fp32
    e = F.pad(x.to(dtype), (0, 0, 0, Lp - L))  # (B, L', D)
    s = F.pad(scores.to(dtype), (0, Lp - L))  # (B, L')
    m = F.pad(mask, (0, Lp - L), value=False)  # (B, L')

    def ranking(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        key = s.detach().masked_fill(~m, float("-inf"))  # masked tokens rank last
        return torch.sort(key, dim=1, descending=True, stable=True).indices  # (B, L)

    def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if t.dim() == 3:
            return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # (B, n, D)
        return t.gather(1, idx)  # (B, n)

    if hard:
        win = ranking(s, m)[:, :k]  # (B, k) best first
        if sort_back:
            win = win.sort(dim=1).values
        e, s, m = take(e, win), take(s, win), take(m, win)
    else:
        for _ in range(R):
            half = s.shape[1] // 2
            order = ranking(s, m)  # (B, L)
            top, bot = order[:, :half], order[:, half:]  # (B, L/2) each, best first
            if flip:
                bot = bot.flip(1)  # worst first: the best token meets the worst
            if sort_back:
                top, perm = top.sort(dim=1)
                bot = bot.gather(1, perm)
            s_a, s_c = take(s, top), take(s, bot)  # (B, L/2)
            m_a, m_c = take(m, top), take(m, bot)  # (B, L/2)
            # softmax over the pair of base^score == sigmoid of the difference
            w_a = torch.sigmoid(torch.pow(base, s_a) - torch.pow(base, s_c))  # (B, L/2)
            w_a = torch.where(m_a & m_c, w_a, torch.where(m_a, 1.0, torch.where(m_c, 0.0, 0.5)))
            w_c = 1.0 - w_a
            e = w_a.unsqueeze(-1) * take(e, top) + w_c.unsqueeze(-1) * take(e, bot)  # (B, L/2, D)
            s = w_a * s_a + w_c * s_c  # (B, L/2)
            m = (w_a * m_a.to(dtype) + w_c * m_c.to(dtype)) > 0.5  # (B, L/2)
    e = e * m.unsqueeze(-1).to(dtype)
    s = s * m.to(dtype)
    return e.to(x.dtype), s.to(scores.dtype), m


def householder_vector(head_dim: int, seed: int, device=None, dtype=None) -> torch.Tensor:
    """A random unit vector in R^head_dim from a private generator seeded with ``seed`` (URPE's H).

    Drawn on the CPU in fp64 (identical for every device/dtype), then moved; works for "meta".
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(head_dim, generator=gen, dtype=torch.float64)
    u = u / torch.linalg.vector_norm(u)
    return u.to(device=device, dtype=dtype or torch.get_default_dtype())


# --- segment and local max pooling (ponet) ---


SEGMENT_BACKENDS = ("auto", "scatter", "torch_scatter", "contiguous")


def torch_scatter_available() -> bool:
    """True when the optional third-party ``torch_scatter`` package imports."""
    try:
        import torch_scatter  # noqa: F401
    except Exception:  # ImportError, or a build that does not match this torch
        return False
    return True


def segment_ids_fixed(seg_len: int | torch.Tensor, length: int, batch: int, device=None) -> torch.Tensor:
    """(B, T) int64 ids ``floor(t / seg_len_b)``: fixed-size segments anchored at position 0.

    ``seg_len`` is one int for every sequence or an int tensor (B,) with one length per sequence.
    """
    positions = torch.arange(length, device=device)  # (T,)
    if isinstance(seg_len, int):
        return (positions // seg_len).expand(batch, length)  # (B, T)
    return positions[None, :] // seg_len.to(device=device, dtype=torch.long)[:, None]  # (B, T)


def segment_max(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, backend: str = "scatter"
) -> torch.Tensor:
    """Channel-wise maximum per segment: values (B, T, D), ids (B, T) in [0, S) -> (B, S, D).

    ``backend="scatter"`` uses ``Tensor.scatter_reduce(amax, include_self=False)``; ties share the
    gradient evenly (as ``amax`` does). ``"torch_scatter"`` uses ``torch_scatter.scatter_max``
    (optional package), whose gradient goes to one arg-max per tie. Segments with no member hold
    -inf with ``"scatter"`` and 0 with ``"torch_scatter"``.
    """
    B, T, D = values.shape
    index = segment_ids.unsqueeze(-1).expand(B, T, D)  # (B, T, D), a view
    if backend == "scatter":
        # Start from -inf, not zeros: scatter_reduce's amax backward (torch 2.x) counts start values
        # equal to the result as tied winners even with include_self=False, so a segment whose
        # maximum is exactly 0 would get a diluted gradient. -inf never equals a finite maximum.
        out = values.new_full((B, num_segments, D), float("-inf"))  # (B, S, D)
        return out.scatter_reduce(1, index, values, reduce="amax", include_self=False)
    if backend == "torch_scatter":
        import torch_scatter

        return torch_scatter.scatter_max(values, index, dim=1, dim_size=num_segments)[0]  # (B, S, D)
    raise ValueError(f"segment_max: backend: expected 'scatter' or 'torch_scatter', got {backend!r}")


def segment_max_contiguous(values: torch.Tensor, seg_len: int) -> torch.Tensor:
    """Maximum over consecutive blocks of ``seg_len`` tokens: (B, T, D) -> (B, ceil(T/seg_len), D).

    The fast path of :func:`segment_max` for equal-length contiguous segments: a reshape (no copy,
    also for strided views) and ``amax``; a shorter last block is reduced on its own. Same values
    and the same gradient as ``segment_max(values, segment_ids_fixed(seg_len, T, B), ...)``.
    """
    B, T, D = values.shape
    full = T // seg_len
    parts = []
    if full:
        blocks = values[:, : full * seg_len].reshape(B, full, seg_len, D)  # (B, T // L, L, D)
        parts.append(blocks.amax(dim=2))  # (B, T // L, D)
    if full * seg_len < T:
        parts.append(values[:, full * seg_len :].amax(dim=1, keepdim=True))  # (B, 1, D)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, ceil(T / L), D)


def local_max_pool(values: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Channel-wise sliding maximum over ``kernel`` (odd) tokens centred on each position.

    values (B, T, D) -> (B, T, D). Positions outside [0, T) are ignored (implicit -inf padding).
    Runs as ``max_pool2d`` over a channels-last (B, D, 1, T) view of the same memory, so no
    transpose copy is made and the backward pass is one scatter by saved indices (ties: the
    gradient goes to one of the tied positions).
    """
    radius = kernel // 2
    if radius == 0:
        return values
    grid = values.transpose(1, 2).unsqueeze(2)  # (B, D, 1, T), channels-last strides
    pooled = F.max_pool2d(grid, (1, kernel), stride=1, padding=(0, radius))  # (B, D, 1, T)
    return pooled.squeeze(2).transpose(1, 2)  # (B, T, D)


# --- sliding-window attention with joint-softmax merging (longformer, bigbird; reused by poolingformer) ---


def _band_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    block: int | None,
    return_lse: bool,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Undilated core of :func:`sliding_window_attention`; returns (out, lse or None)."""
    B, H, T, P = q.shape
    w = min(window, T - 1)  # |i - j| <= T - 1 always: a wider window changes nothing
    c = max(1, min(block if block else max(w, 1), T))  # query block
    left = w
    S = c + w if causal else c + 2 * w  # keys a query block can reach
    nb = -(-T // c)
    Tq = nb * c
    right = Tq - T + S - c - left  # keys padded to (nb - 1) * c + S
    device = q.device

    # Blocks go to the batch axis, heads stay second: (B*nb, H, c, P), so the fused kernel gets
    # 4-d inputs and the mask broadcasts over heads. From a split_heads view of a (B, T, D)
    # projection, (B, T, H, P) is contiguous and these are views.
    qt = q.transpose(1, 2)  # (B, T, H, P)
    if Tq > T:
        qt = F.pad(qt, (0, 0, 0, 0, 0, Tq - T))  # (B, Tq, H, P)
    qb = qt.reshape(B * nb, c, H, P).transpose(1, 2)  # (B*nb, H, c, P)
    # key windows: position n*c - left + s for slot s of block n (a strided view of the padded keys)
    # P stays the unit-stride axis: when B > 1 the reshape copies, and a copy in (.., P, S) order
    # would hand SDPA keys with a strided last dim (the fused CPU/CUDA kernels then fall back to math)
    kw = F.pad(k.transpose(1, 2), (0, 0, 0, 0, left, right)).unfold(1, S, c).transpose(-1, -2)  # (B, nb, H, S, P)
    vw = F.pad(v.transpose(1, 2), (0, 0, 0, 0, left, right)).unfold(1, S, c).transpose(-1, -2)  # (B, nb, H, S, P)
    kw, vw = kw.reshape(B * nb, H, S, P), vw.reshape(B * nb, H, S, P)  # (B*nb, H, S, P)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=device)
    real = F.pad(mask, (left, right), value=False).unfold(1, S, c).reshape(B * nb, S)  # (B*nb, S)

    # query r of block n is position n*c + r: offset j - i = s - left - r
    rel = torch.arange(S, device=device)[None, :] - left - torch.arange(c, device=device)[:, None]  # (c, S)
    band = (rel <= 0) & (rel >= -w) if causal else rel.abs() <= w  # (c, S)
    allowed = band & real[:, None, :]  # (B*nb, c, S)
    has_any = allowed.any(dim=-1)  # (B*nb, c)
    fdt = torch.promote_types(q.dtype, torch.float32)

    def unblock(t: torch.Tensor) -> torch.Tensor:
        # (B*nb, H, c, X) -> (B*nb, c, H, X) -> (B, Tq, H, X) -> (B, H, T, X)
        return t.transpose(1, 2).reshape(B, Tq, H, -1).transpose(1, 2)[:, :, :T]

    if not return_lse and q.dtype != torch.float64:
        # fused kernel; an additive finite bias keeps rows without any allowed key finite
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=device)  # (B*nb, c, S)
        bias.masked_fill_(~allowed, neg_value(q.dtype))
        out = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=bias[:, None], scale=scale, dropout_p=dropout_p)  # (B*nb, H, c, P)
        keep = has_any[:, None, :, None].to(out.dtype)  # (B*nb, 1, c, 1): rows without a key -> 0 (no host sync)
        out = out * keep if out.requires_grad else out.mul_(keep)  # in place outside autograd: no second copy
        return unblock(out), None

    scores = torch.matmul(qb, kw.transpose(-1, -2)).to(fdt) * scale  # (B*nb, H, c, S)
    scores = scores.masked_fill(~allowed[:, None], neg_value(fdt))
    lse = torch.logsumexp(scores, dim=-1)  # (B*nb, H, c)
    probs = torch.exp(scores - lse.unsqueeze(-1)) * has_any[:, None, :, None]  # (B*nb, H, c, S)
    if dropout_p:
        # the lse stays that of the undropped weights: merging parts by it then equals dropout on
        # the joint softmax (an elementwise mask commutes with each part's rescaling)
        probs = F.dropout(probs, dropout_p)  # (B*nb, H, c, S)
    out = torch.matmul(probs.to(v.dtype), vw)  # (B*nb, H, c, P)
    lse = lse.masked_fill(~has_any[:, None], neg_value(fdt))
    return unblock(out), unblock(lse.unsqueeze(-1)).squeeze(-1)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dilation: int = 1,
    *,
    scale: float | None = None,
    block: int | None = None,
    return_lse: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Banded softmax attention in O(T·window) memory; no T x T matrix or mask is ever built.

    q, k, v: (B, H, T, P); mask: bool (B, T) over keys, True = key may be attended (padding, or
    any other excluded keys, False). Query i sees key j = i + dilation*t for integer t in
    [-window, window] (t in [-window, 0] when ``causal``) with 0 <= j < T and mask[j] True.
    ``window`` is one-sided: 2*window + 1 keys (window + 1 when causal). Any T >= 1.

    Blocked: the queries are cut into blocks of ``block`` (default: window) positions; every
    block scores the block + 2*window keys around it (a strided view of the padded keys) under a
    (block, block + 2*window) band mask, so the scores are (B, H, T, block + 2*window). Dilation
    d runs the undilated band on each of the d residue classes i mod d (folded into the batch).

    Returns out (B, H, T, P) in q's dtype. With ``return_lse`` also returns the log-sum-exp of
    each row's scaled scores over its allowed keys, lse (B, H, T) in at least fp32, so results
    over disjoint key sets (o_a, l_a), (o_b, l_b) merge into their joint softmax as
    ``l = logaddexp(l_a, l_b); o = exp(l_a - l) o_a + exp(l_b - l) o_b`` (see
    :func:`merge_softmax_parts`). A row without any allowed key gives out = 0 and
    lse = ``neg_value`` (finite, so merging never makes NaN). Without ``return_lse`` the fused
    SDPA kernel runs (fp64 inputs use the matmul path). ``dropout_p``: dropout on the attention
    weights (SDPA's ``dropout_p`` on the fused path; the caller passes 0 outside training).
    """
    B, H, T, P = q.shape
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"sliding_window_attention: window: expected an integer >= 0, got {window!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"sliding_window_attention: dilation: expected an integer >= 1, got {dilation!r}")
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"sliding_window_attention: mask: expected shape ({B}, {T}), got {tuple(mask.shape)}")
    scale = P**-0.5 if scale is None else scale
    d = dilation
    if d == 1 or T == 1:
        out, lse = _band_attention(q, k, v, window, mask, causal, scale, block, return_lse, dropout_p)
        return (out, lse) if return_lse else out

    n = -(-T // d)  # positions per residue class
    Td = n * d
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=q.device)
    mask = F.pad(mask, (0, Td - T), value=False)  # (B, Td)

    def fold(t: torch.Tensor) -> torch.Tensor:
        # (B, H, T, P) -> (B, H, n, d, P) -> (B, d, H, n, P) -> (B*d, H, n, P): class r = i mod d
        t = F.pad(t, (0, 0, 0, Td - T)).reshape(B, H, n, d, P)
        return t.permute(0, 3, 1, 2, 4).reshape(B * d, H, n, P)

    mask_f = mask.reshape(B, n, d).transpose(1, 2).reshape(B * d, n)  # (B*d, n)
    out, lse = _band_attention(
        fold(q), fold(k), fold(v), window, mask_f, causal, scale, block, return_lse, dropout_p
    )
    # (B*d, H, n, P) -> (B, d, H, n, P) -> (B, H, n, d, P) -> (B, H, Td, P)
    out = out.reshape(B, d, H, n, P).permute(0, 2, 3, 1, 4).reshape(B, H, Td, P)[:, :, :T]
    if not return_lse:
        return out
    lse = lse.reshape(B, d, H, n).permute(0, 2, 3, 1).reshape(B, H, Td)[:, :, :T]  # (B, H, T)
    return out, lse


def merge_softmax_parts(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint softmax of attention results over disjoint key sets.

    parts: [(out (B, H, T, P), lse (B, H, T))], each a softmax-normalised output with the
    log-sum-exp of its row's scores. Returns (out, lse) of the softmax over the union of the key
    sets. Finite ``neg_value`` lse of empty rows stay harmless (their weight underflows to 0).
    """
    lse = parts[0][1]
    for _, l_part in parts[1:]:
        lse = torch.logaddexp(lse, l_part)  # (B, H, T)
    out = None
    for o_part, l_part in parts:
        weight = torch.exp(l_part - lse).unsqueeze(-1).to(o_part.dtype)  # (B, H, T, 1)
        out = o_part * weight if out is None else out + o_part * weight  # (B, H, T, P)
    return out, lse

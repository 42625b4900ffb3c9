"""DeltaNet: linear attention whose state is updated by the delta rule, chunked with the WY form.

Paper
    Yang, Wang, Zhang, Shen, Kim, "Parallelizing Linear Transformers with the Delta Rule over
    Sequence Length", NeurIPS 2024, arXiv 2406.06484. Layer as in fla-org/flash-linear-attention
    (``fla/layers/delta_net.py``, its defaults).

Mechanism
    Per head a p x p state S (row convention, ``o_t = q_t S_t``) is corrected towards each new
    key-value pair: ``S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})`` with ``beta_t =
    sigmoid(W_b x_t)`` per head and q scaled by p^-1/2. q, k, v come from bias-free projections,
    a depthwise causal short convolution (``conv_size`` taps) and SiLU; q and k are then
    L2-normalised per head. The output is RMS-normalised per head (learned gain) and projected by
    W_O. Fast path: chunks of ``chunk_size`` tokens; inside a chunk the WY representation turns the
    sequential corrections into one unit-lower-triangular solve, ``(I + tril(diag(beta) K K^T, -1))
    [U, W] = diag(beta) [V, K]``; between chunks only the state is passed,
    ``U' = U - W S``, ``O = Q S + tril(Q K^T) U'``, ``S <- S + K^T U'``. No T x T tensor exists
    outside a chunk.

Deviations
    * Bidirectional (the default, ``causal=False``): a forward scan plus a backward scan over the
      reversed sequence, **sharing every parameter** (projections, short convolution, beta); the
      backward scan's short convolution therefore looks at the next tokens. The two outputs are
      summed before the output norm. fla has no bidirectional DeltaNet.
    * Padding: padded tokens get beta = 0 (they write nothing to the state, which passes through
      unchanged) and zero projections before the short convolution (they feed no neighbour).
    * Head widths of k and v are both dim / heads (fla's default too); no output gate
      (fla's ``use_gate=False`` default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.base import (
    Complexity,
    MixerConfig,
    MixerSpec,
    TokenMixer,
    cfg,
    ceil_div,
    check_inputs,
    check_positive_int,
    check_range,
    zero_padded,
)
from zoo.functional import chunks_of, compute_dtype, linear_flops, merge_heads, split_heads
from zoo.registry import register
from zoo.scan import masked_exp, records_graph
from zoo.state import StateSize, conv_with_tail, delta_rule_step

# --- the op: gated delta rule, chunked (the ungated rule is g = None) --------------------------


def _chunk(t: torch.Tensor, size: int) -> torch.Tensor:
    # (B, H, T, ...) -> (B, H, N, C, ...), T a multiple of C
    B, H, T = t.shape[:3]
    return t.reshape(B, H, T // size, size, *t.shape[3:])


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    chunk_size: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal (gated) delta rule ``o_t = (scale q_t) S_t``, chunked with the WY representation.

    q, k: (B, H, T, K); v: (B, H, T, V); beta: (B, H, T) write strengths; g: (B, H, T) log decay
    (<= 0) or None for the plain delta rule. Recurrence (row convention, S: K x V, S_0 = 0):
    ``S_t = exp(g_t) S_{t-1} + beta_t k_t^T (v_t - exp(g_t) k_t S_{t-1})``. Same layout and
    numbers as fla's ``delta_rule_chunkwise`` (with g None) and, transposed to (B, T, H, .),
    ``naive_chunk_gated_delta_rule``; scale defaults to K^-1/2 as there. Any T (zero-padded to
    the chunk inside; zero beta and g there add nothing). Runs in the inputs' dtype.
    Returns o (B, H, T, V).
    """
    B, H, T, K = q.shape
    C = chunk_size
    scale = K**-0.5 if scale is None else scale
    _, pad = chunks_of(T, C)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, Tp, .)
        beta = F.pad(beta, (0, pad))  # (B, H, Tp)
        g = None if g is None else F.pad(g, (0, pad))
    qc, kc, vc = _chunk(q * scale, C), _chunk(k, C), _chunk(v, C)  # (B, H, N, C, K|V)
    bc = _chunk(beta, C).unsqueeze(-1)  # (B, H, N, C, 1)
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(0)  # j >= i: not strictly below
    future = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)  # j > i
    kk = kc @ kc.transpose(-1, -2)  # (B, H, N, C, C)
    qk = qc @ kc.transpose(-1, -2)  # (B, H, N, C, C)
    if g is None:
        kw, k_end, gamma, last = kc, kc, None, None
    else:
        G = _chunk(g, C).cumsum(-1)  # (B, H, N, C): log decay from the chunk start, inclusive
        # decay between positions i <= t of a chunk; 0 above the diagonal
        gamma_ti = masked_exp(G.unsqueeze(-1) - G.unsqueeze(-2), future)  # (B, H, N, C, C)
        kk, qk = kk * gamma_ti, qk * gamma_ti
        gamma = G.exp().unsqueeze(-1)  # (B, H, N, C, 1)
        last = G[..., -1:].exp().unsqueeze(-1)  # (B, H, N, 1, 1): decay over the whole chunk
        kw = kc * gamma  # (B, H, N, C, K): key seen from the chunk start
        k_end = kc * (G[..., -1:] - G).exp().unsqueeze(-1)  # (B, H, N, C, K): key seen from the chunk end
    system = (kk * bc).masked_fill(strict, 0.0) + torch.eye(C, dtype=q.dtype, device=q.device)  # (B, H, N, C, C)
    rhs = torch.cat([vc, kw], dim=-1) * bc  # (B, H, N, C, V + K)
    uw = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)  # (B, H, N, C, V + K)
    u, w = uw.split([v.shape[-1], K], dim=-1)  # (B, H, N, C, V), (B, H, N, C, K)
    states, news = _pass_states(u, w, k_end, last)  # (B, H, N, K, V) each chunk's entering state
    q_in = qc if gamma is None else qc * gamma  # (B, H, N, C, K)
    o = q_in @ states + qk.masked_fill(future, 0.0) @ news  # (B, H, N, C, V)
    return o.reshape(B, H, -1, v.shape[-1])[:, :, :T]  # (B, H, T, V)


def _pass_states(
    u: torch.Tensor, w: torch.Tensor, k_end: torch.Tensor, last: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential part: chunk n's entering state S_n and its corrected values U'_n = U_n - W_n S_n.

    u (B, H, N, C, V), w and k_end (B, H, N, C, K), last (B, H, N, 1, 1) chunk decay or None.
    Two small matmuls per chunk; everything else is batched over chunks by the caller.
    """
    B, H, N, C, V = u.shape
    S = u.new_zeros(B, H, w.shape[-1], V)
    if not records_graph(u, w, k_end):
        return _pass_states_inference(u, w, k_end, last, S)
    # unbind once: indexing chunk n inside the loop would make autograd build a full-size
    # zero gradient per chunk (quadratic in T)
    us, ws, ks = u.unbind(2), w.unbind(2), k_end.unbind(2)
    lasts = [None] * N if last is None else last.unbind(2)
    states, news = [], []
    for n in range(N):
        states.append(S)
        new = us[n] - ws[n] @ S  # (B, H, C, V)
        news.append(new)
        carried = S if lasts[n] is None else S * lasts[n]
        S = carried + ks[n].transpose(-1, -2) @ new  # (B, H, K, V)
    return torch.stack(states, dim=2), torch.stack(news, dim=2)  # (B, H, N, K, V), (B, H, N, C, V)


def _pass_states_inference(
    u: torch.Tensor, w: torch.Tensor, k_end: torch.Tensor, last: torch.Tensor | None, S: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pass_states` without autograd: written into two preallocated tensors. The list
    form keeps 2N small tensors alive until it stacks them (a second full copy), and the freed
    small blocks stay in the C heap: a deltanet forward at 16k held 46 MiB of process memory more
    than its live tensors, 12% of its peak."""
    N = u.shape[2]
    states = u.new_empty(*S.shape[:2], N, *S.shape[2:])  # (B, H, N, K, V)
    news = torch.empty_like(u)  # (B, H, N, C, V)
    for n in range(N):
        states[:, :, n] = S
        new = u[:, :, n] - w[:, :, n] @ S  # (B, H, C, V)
        news[:, :, n] = new
        carried = S if last is None else S * last[:, :, n]
        S = carried + k_end[:, :, n].transpose(-1, -2) @ new  # (B, H, K, V)
    return states, news


# --- the layer's pieces, shared with gated_deltanet --------------------------------------------


def short_conv(z: torch.Tensor, weight: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Depthwise causal convolution + SiLU over a (B, T, C) sequence; weight (C, 1, taps).

    A sum of shifted, channel-scaled copies in the (B, T, C) layout: a few elementwise passes, no
    transposes to conv1d's (B, C, T). ``reverse=True`` convolves the reversed sequence (the
    backward scan's view) and returns it in that reversed order.
    """
    if reverse:
        z = z.flip(1)
    T, taps = z.shape[1], weight.shape[-1]
    zp = F.pad(z, (0, 0, taps - 1, 0))  # (B, T + taps - 1, C): zeros before the first token
    y = zp[:, taps - 1 :] * weight[:, 0, taps - 1]  # (B, T, C): tap on the token itself
    for j in range(taps - 1):
        y = y + zp[:, j : j + T] * weight[:, 0, j]  # tap on token t - (taps - 1) + j
    return F.silu(y)


def l2_normalize(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``z / sqrt(||z||^2 + eps)`` over the last axis (finite gradient at z = 0)."""
    return z * torch.rsqrt(z.square().sum(-1, keepdim=True) + eps)


def rms_norm(z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis with a learned gain (per head: z (..., P), weight (P,))."""
    return z * torch.rsqrt(z.square().mean(-1, keepdim=True) + eps) * weight


def init_short_conv(channels: int, taps: int, device=None, dtype=None) -> nn.Parameter:
    """An uninitialised depthwise conv weight (C, 1, taps); :func:`reset_short_conv` fills it."""
    return nn.Parameter(torch.empty(channels, 1, taps, device=device, dtype=dtype))


def reset_short_conv(weight: torch.Tensor) -> None:
    """PyTorch's Conv1d default init of a depthwise weight (C, 1, taps): kaiming-uniform, a = sqrt(5)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def delta_rule_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """DeltaNet's swappable causal core: q (already scaled), k (B, H, T, K), v (B, H, T, V), beta
    (B, H, T) -> o (B, H, T, V); :func:`delta_rule_chunked` with scale 1."""
    return delta_rule_chunked(q, k, v, beta, None, chunk, scale=1.0)


def delta_projections(mixer, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The q, k, v projections (B, T, D) in the compute dtype, padded rows zeroed (they must feed
    no neighbour through the short convolutions)."""
    dt = compute_dtype(x.dtype)
    out = []
    for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj):
        z = proj(x).to(dt)  # (B, T, D)
        out.append(z if mask is None else z.masked_fill(~mask.unsqueeze(-1), 0.0))
    return out


def delta_qkv(mixer, projections: list[torch.Tensor], reverse: bool) -> tuple[torch.Tensor, ...]:
    """q, k (L2-normalised), v (B, H, T, P) after the short convolutions + SiLU, in reversed token
    order when ``reverse`` (the backward scan)."""
    H = mixer.config.heads
    q, k, v = (
        split_heads(short_conv(z, weight.to(z.dtype), reverse), H)  # (B, H, T, P)
        for z, weight in zip(projections, (mixer.q_conv, mixer.k_conv, mixer.v_conv))
    )
    return l2_normalize(q), l2_normalize(k), v


def delta_scans(
    mixer, x: torch.Tensor, mask: torch.Tensor | None, beta: torch.Tensor, g: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """The forward scan, plus the backward scan over the reversed sequence unless ``causal``
    (same parameters, outputs summed), each through ``mixer.scan`` (q scaled by P^-1/2 here;
    g is passed after beta when not None). beta, g: (B, H, T). Returns (B, H, T, P)."""
    chunk, scale = mixer.config.chunk_size, mixer.config.head_dim**-0.5
    projections = delta_projections(mixer, x, mask)  # 3 x (B, T, D), shared by both scans
    q, k, v = delta_qkv(mixer, projections, reverse=False)  # (B, H, T, P)
    gates = (beta,) if g is None else (beta, g)  # (B, H, T) each
    o = mixer.scan(q * scale, k, v, *gates, chunk=chunk)  # (B, H, T, P)
    if causal:
        return o
    q, k, v = delta_qkv(mixer, projections, reverse=True)  # (B, H, T, P), reversed token order
    gates = tuple(t.flip(2) for t in gates)  # (B, H, T) each, reversed token order
    return o + mixer.scan(q * scale, k, v, *gates, chunk=chunk).flip(2)


def per_head_gate(t: torch.Tensor, mask: torch.Tensor | None, fill: float) -> torch.Tensor:
    """(B, T, H) -> (B, H, T), with ``fill`` at padded tokens (beta 0 / log decay 0: no write, no decay)."""
    if mask is not None:
        t = t.masked_fill(~mask.unsqueeze(-1), fill)
    return t.transpose(1, 2)


def delta_flops(c, B: int, T: int, causal: bool, gated: bool) -> float:
    """Forward FLOPs of a (gated) DeltaNet layer (multiply-add = 2), projections included."""
    D, H, P, C = c.dim, c.heads, c.head_dim, c.chunk_size
    proj = linear_flops(B, T, D, D, count=4 + int(gated)) + linear_flops(B, T, D, H, count=2 if gated else 1)
    conv = 2.0 * B * T * 3 * D * c.conv_size
    Tp = ceil_div(T, C) * C
    # per token and head: K K^T and Q K^T (C·P each), the triangular solve on 2P columns
    # (C·P), scores @ U' (C·P); W S, Q S, K^T U' (P·P each)
    scan = 2.0 * B * H * Tp * (4 * C * P + 3 * P * P)
    return proj + conv + scan * (1 if causal else 2)


@dataclass(frozen=True)
class DeltaNetConfig(MixerConfig):
    chunk_size: int = cfg(64, "tokens per chunk of the WY-chunked scan")
    conv_size: int = cfg(4, "taps of the depthwise causal short convolution on q, k, v")
    norm_eps: float = cfg(1e-5, "epsilon of the per-head output RMSNorm")

    def validate(self) -> None:
        check_positive_int("chunk_size", self.chunk_size)
        check_positive_int("conv_size", self.conv_size)
        check_range("norm_eps", self.norm_eps, 0.0, 1.0)

    @classmethod
    def tiny(cls) -> "DeltaNetConfig":
        return cls(dim=16, heads=2, chunk_size=4)


def deltanet_flops(c: DeltaNetConfig, B: int, T: int, causal: bool = False) -> float:
    return delta_flops(c, B, T, causal, gated=False)


@register
class DeltaNetMixer(TokenMixer):
    spec = MixerSpec(
        name="deltanet",
        title="Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
        arxiv="2406.06484",
        year=2024,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=deltanet_flops,
        cost_note=(
            "O(T·(c + p)·D) time, c = chunk_size, p = head width (WY solve and scores inside chunks, "
            "p x p state between them); memory O(B·T·(c + D)) + O(B·H·(T/c)·p^2); bidirectional = 2 scans"
        ),
        causal=True,
        key_padding_mask=True,
        deviations=(
            "bidirectional = forward + backward scan with shared parameters, summed before the norm "
            "(fla has none); padded tokens get beta = 0 and zero conv inputs; no output gate (fla default)"
        ),
        state=StateSize.CONSTANT,  # the p x p delta-rule state per head and the short convs' last inputs
    )
    Config = DeltaNetConfig
    # the causal core (q, k, v, beta, chunk=...) -> o, q pre-scaled; a benchmark may swap it on an instance
    scan = staticmethod(delta_rule_scan)

    def __init__(self, config: DeltaNetConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, H = config.dim, config.heads
        self.q_proj = nn.Linear(D, D, bias=False, **kw)
        self.k_proj = nn.Linear(D, D, bias=False, **kw)
        self.v_proj = nn.Linear(D, D, bias=False, **kw)
        self.b_proj = nn.Linear(D, H, bias=False, **kw)  # beta = sigmoid(W_b x), one per head
        self.q_conv = init_short_conv(D, config.conv_size, **kw)
        self.k_conv = init_short_conv(D, config.conv_size, **kw)
        self.v_conv = init_short_conv(D, config.conv_size, **kw)
        self.o_norm = nn.Parameter(torch.empty(config.head_dim, **kw))  # RMSNorm gain, shared by heads
        self.out_proj = nn.Linear(D, D, bias=False, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for weight in (self.q_conv, self.k_conv, self.v_conv):
            reset_short_conv(weight)
        nn.init.ones_(self.o_norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero,
        padded tokens write nothing to the state (beta = 0).
        causal: True runs the causal delta-rule scan (position i sees j <= i); False (default) sums
        a forward and a backward scan.
        Extra inputs: none. Precision: the scans and the output norm run in at least fp32.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        dt = compute_dtype(x.dtype)
        beta = per_head_gate(torch.sigmoid(self.b_proj(x).to(dt)), mask, 0.0)  # (B, H, T)
        o = delta_scans(self, x, mask, beta, None, causal)  # (B, H, T, P)
        o = rms_norm(o, self.o_norm.to(dt), c.norm_eps)  # (B, H, T, P)
        y = self.out_proj(merge_heads(o).to(x.dtype))  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the p x p delta-rule state per head and the short convs' last inputs --------

    def _state_tensors(self, batch, device, dtype):
        return delta_state_tensors(self, batch, device, dtype)

    def _advance(self, x, mask, state):
        c = self.config
        dt = state.tensors["S"].dtype
        beta = per_head_gate(torch.sigmoid(self.b_proj(x).to(dt)), mask, 0.0)  # (B, H, n)
        o = rms_norm(delta_state_step(self, x, mask, state, beta, None), self.o_norm.to(dt), c.norm_eps)  # (B, H, n, P)
        return self.out_proj(merge_heads(o).to(x.dtype))  # (B, n, D)


def delta_state_tensors(mixer, batch, device, dtype) -> dict:
    """The generation state of deltanet / gated_deltanet: the p x p state per head and the last
    conv_size - 1 projections of q, k, v (padded ones zero) for the short convolutions."""
    c = mixer.config
    cd, P = compute_dtype(dtype), c.head_dim
    return {
        "S": torch.zeros(batch, c.heads, P, P, device=device, dtype=cd),  # (B, H, K, V)
        "conv": torch.zeros(batch, c.conv_size - 1, 3 * c.dim, device=device, dtype=cd),  # (B, w - 1, 3D)
    }


def delta_state_step(mixer, x, mask, state, beta, g) -> torch.Tensor:
    """q, k, v through the short convs (continuing from the state's tail), then the (gated)
    delta rule continuing from S; beta, g (B, H, n). Returns o (B, H, n, P)."""
    c, t = mixer.config, state.tensors
    qkv = torch.cat(delta_projections(mixer, x, mask), dim=-1)  # (B, n, 3D)
    weight = torch.cat([mixer.q_conv, mixer.k_conv, mixer.v_conv]).to(qkv.dtype)  # (3D, 1, w): depthwise
    qkv, t["conv"] = conv_with_tail(t["conv"], qkv, lambda u: short_conv(u, weight))  # (B, n, 3D)
    q, k, v = (split_heads(z, c.heads) for z in qkv.split(c.dim, dim=-1))  # (B, H, n, P) each
    q, k = l2_normalize(q), l2_normalize(k)
    o, t["S"] = delta_rule_step(q * c.head_dim**-0.5, k, v, beta, g, t["S"], c.chunk_size)
    return o  # (B, H, n, P)

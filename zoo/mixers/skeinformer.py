"""Skeinformer: softmax attention approximated by importance-sampled columns and exact pilot rows.

Paper
    Chen, Zeng, Hakkani-Tür, Jin, Ji, Yang, "Sketching as a Tool for Understanding and Accelerating Self-attention
    for Long Sequences", NAACL 2022, arXiv 2112.05359. Code: pkuzengqi/Skeinformer
    (``src/models/attention_skeinformer.py``, class ``SkeinAttention``).

Mechanism
    Per sequence with N real tokens, d = min(sketch_size, N) (``sketch_size=None``: int(4 ln N), as
    the reference's ``sampling_factor * log(n)``).
    d pilot queries are drawn uniformly with replacement among the real tokens (shared by the
    heads) and their exact softmax rows Ppil (d x T) are computed; key/value columns are then
    sampled per head without replacement with probability proportional to
    ||Ppil[:, j]||_2 · ||v_j||_2 (padded columns have probability 0). Every query i gets
    ``(sum_{j in S} e_ij v_j + g_i sum_{j not in S} v_j) / (sum_{j in S} e_ij + g_i (N - d))``
    with e_ij = exp(q_i·k_j / sqrt(p)) and g_i their geometric mean over the sample (the
    unsampled columns are imputed with it); the pilot rows are then replaced by their exact
    outputs. When N <= sketch_size every real column is sampled and the result is exact.

Deviations
    d is per sequence (min(sketch_size, N_b)) instead of min(sketch_size, min_b N_b - 1) for the
    whole batch (the reference's ``.item()`` couples the batch and forbids d = N); pilot rows are
    drawn among the real tokens wherever they are (the reference assumes right padding).
    Randomness: a module-owned splitmix64 stream (seeded by ``seed``, its state an int64 buffer on
    the module's device) gives one 64-bit key per call in training; in eval the key is fixed by
    ``seed`` unless ``resample_in_eval=True`` (the reference resamples on every call, eval
    included). Keys never leave the device: no host sync and no host-to-device copy per call, and
    the forward compiles with ``fullgraph=True``. The uniforms are a counter-based hash of
    (key, head, position / slot), so a sequence's draws do not depend on the rest of the batch
    nor on trailing padding; columns are sampled without replacement by the Gumbel-top-k trick
    (same distribution as ``torch.multinomial(replacement=False)``, but never fails when fewer
    than d columns have non-zero weight). Exponents are shifted by the row maximum over the
    sample (the reference exponentiates raw logits); the core runs in at least fp32. The two
    heavy stages (pilot rows, sampled estimator) are tiled custom autograd functions that keep
    per-row statistics and recompute tiles in the backward, so no T x d matrix is stored: memory
    O(B·T·D) where the reference's is O(B·H·T·d).
    ``attention_dropout`` (default 0, training only): ``SkeinAttention`` applies none; one of the
    authors' ablations has it commented out on its sampled-column softmax weights. The zoo drops
    the weights that meet the values: the sampled columns' e_ij (after normalisation: the
    denominator keeps them) and the pilot rows' exact softmax weights; the imputed weight of the
    unsampled columns (one shared g_i per row) is not dropped. The masks are counter hashes of the
    call's key, regenerated tile by tile in the backward, so dropout stores nothing T x d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from zoo.base import (
    Complexity,
    MixerConfig,
    MixerSpec,
    TokenMixer,
    attention_dropout_field,
    attention_dropout_p,
    cfg,
    check_choice,
    check_inputs,
    check_positive_int,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import compute_dtype, linear_flops, merge_heads, neg_value, split_heads
from zoo.registry import register
from zoo.rng import counter_uniform, fixed_key, next_key, stream_start


@dataclass(frozen=True)
class SkeinformerConfig(MixerConfig):
    sketch_size: int | None = cfg(
        256, "sampled columns d (and pilot rows) per sequence, capped at its length; None: int(4 ln N)"
    )
    seed: int = cfg(0, "seed of the module's generator (fixes the eval draws)")
    resample_in_eval: bool = cfg(False, "draw fresh samples on every eval call, as the reference does")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        if self.sketch_size is not None:
            check_positive_int("sketch_size", self.sketch_size)
        check_positive_int("seed", self.seed, minimum=0)
        if self.seed >= 2**63:
            raise ZooValueError(f"skeinformer: seed: expected an integer < 2**63, got {self.seed}")
        check_choice("resample_in_eval", self.resample_in_eval, (True, False))

    @classmethod
    def tiny(cls) -> "SkeinformerConfig":
        return cls(dim=16, heads=2, sketch_size=6)


def skeinformer_flops(c: SkeinformerConfig, B: int, T: int, causal: bool = False) -> float:
    d = sketch_width(c.sketch_size, T)
    # pilot rows Q_pil K^T and Ppil V, sampled Q K_S^T and E V_S: 4 x (2 B H d T P)
    return linear_flops(B, T, c.dim, c.dim, count=4) + 8.0 * B * T * d * c.dim


@register
class SkeinformerMixer(TokenMixer):
    spec = MixerSpec(
        name="skeinformer",
        title="Sketching as a Tool for Understanding and Accelerating Self-attention for Long Sequences",
        arxiv="2112.05359",
        year=2022,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=skeinformer_flops,
        cost_note=(
            "O(T·d·D) time, d = sketch_size (pilot rows + sampled columns); memory O(B·T·D) "
            "(tiled: no T x d matrix is stored, backward recomputes tiles)"
        ),
        causal=False,
        key_padding_mask=True,  # exactly for N <= sketch_size; in distribution otherwise
        stochastic=True,
        approximates_softmax=True,
        deviations=(
            "d per sequence (reference: min over the batch via .item(), capped at N-1); draws fixed in eval "
            "unless resample_in_eval; counter-based draws independent of batch and padding; Gumbel-top-k "
            "column sampling; max-shifted exponents; fp32 core; tiled with recompute (O(T·D) memory); "
            "attention dropout (off by default, none in the reference) on sampled and pilot weights"
        ),
    )
    Config = SkeinformerConfig

    def __init__(self, config: SkeinformerConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        # draw state on the module's device (non-persistent buffers: follow .to(), not in state_dict)
        self.register_buffer("draw_state", torch.zeros((), dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("eval_key", torch.zeros((), dtype=torch.int64, device=device), persistent=False)
        self._init_weights()

    def reset_draws(self) -> None:
        """(Re)initialise the draw buffers from ``config.seed`` (also after ``to_empty``)."""
        self.reseed(self.config.seed)
        with torch.no_grad():
            self.eval_key.fill_(fixed_key(self.config.seed))

    def _init_weights(self) -> None:
        self.reset_draws()  # training draws restart as after construction (also after to_empty)

    def reseed(self, seed: int) -> None:
        """Restart the training-time draws from ``seed`` (eval draws follow ``config.seed``)."""
        with torch.no_grad():
            self.draw_state.fill_(stream_start(seed))

    def _call_key(self) -> torch.Tensor:
        """0-d int64 key of this call's draws, on the module's device (splitmix64: state += GOLDEN)."""
        if self.training or self.config.resample_in_eval:
            return next_key(self.draw_state)
        return self.eval_key

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        H, P = c.heads, c.head_dim
        dt = compute_dtype(x.dtype)
        q = split_heads(self.q_proj(x), H).to(dt)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H).to(dt)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H).to(dt)  # (B, H, T, P)
        p = attention_dropout_p(self)
        o, _ = skein_attention(q, k, v, mask, self._call_key(), c.sketch_size, scale=P**-0.5, dropout_p=p)  # (B, H, T, P)
        y = self.out_proj(merge_heads(o).to(x.dtype))  # (B, T, D)
        return zero_padded(y, mask)


class SkeinDraw(NamedTuple):
    """The random choices of one call (for tests and inspection)."""

    pilot_pos: torch.Tensor  # (B, S) pilot query positions; slots >= d are inactive
    columns: torch.Tensor  # (B, H, S) sampled key/value columns, in draw order; first d are used
    d: torch.Tensor  # (B,) per-sequence sketch size


def sketch_width(sketch_size: int | None, T: int) -> int:
    """Largest per-sequence d for length T (the static width S of the sample tensors)."""
    if sketch_size is None:
        return min(T, max(1, int(4 * math.log(T)))) if T > 1 else 1  # the reference's int(4 ln n)
    return min(sketch_size, T)


# --- the two heavy stages, tiled ------------------------------------------------------------------
#
# Each stage is a custom autograd Function that never holds a full (S x T) or (T x S) matrix: the
# forward works through tiles and keeps only per-row statistics (log-normalisers, shifts,
# denominators); the backward recomputes each tile from them (flash-attention style). On CPU this
# is faster as well as smaller: a fresh 64 MiB tensor costs more in page faults than its arithmetic.

TILE = 1 << 20  # elements of one work tile (all batch rows and heads together)
PILOT_TILE = 1 << 22  # pilot forward: row tiles of the (S x T) matrix, larger for better products


def _tiles(n: int, per_item: int, tile: int) -> list[tuple[int, int]]:
    step = max(1, tile // max(1, per_item))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _flat(t: torch.Tensor) -> torch.Tensor:
    # (B, H, R, C) -> (B*H, R, C) for in-place batched accumulation
    return t.reshape(-1, t.shape[-2], t.shape[-1])


class Dropout(NamedTuple):
    """Attention dropout of one call: the call's key, the probability and which weights (0 or 1)."""

    key: torch.Tensor | int
    p: float
    stage: int  # 0: sampled-column weights, 1: pilot rows (separate draws)


def _keep_scale(drop: Dropout | None, like: torch.Tensor, rows: tuple, cols: tuple, strides: tuple) -> torch.Tensor | None:
    """Dropout multipliers (B, H, r, c), 0 or 1/(1-p), in like's dtype and device (like: (B, H, ..)).

    Entry (i, j) of the weight tile rows[0]:rows[1] x cols[0]:cols[1] is a counter hash of (key,
    stage, b, h, i * strides[0] + j * strides[1]) (the index counts slots fastest, so it does not
    depend on T): the backward regenerates the forward's mask tile by tile, nothing T x d is stored.
    """
    if drop is None:
        return None
    B, H, dev = like.shape[0], like.shape[1], like.device
    bh = torch.arange(B, device=dev)[:, None] * H + torch.arange(H, device=dev)[None, :]  # (B, H)
    lane = (H + 1 + 2 * bh + drop.stage)[:, :, None, None]  # (B, H, 1, 1): past the sampling lanes 0..H
    r = torch.arange(rows[0], rows[1], device=dev)[:, None]  # (r, 1)
    c = torch.arange(cols[0], cols[1], device=dev)[None, :]  # (1, c)
    u = counter_uniform(drop.key, lane, r * strides[0] + c * strides[1])  # (B, H, r, c) float64
    return (u >= drop.p).to(like.dtype) / (1.0 - drop.p)


class PilotAttention(torch.autograd.Function):
    """Exact softmax attention rows of the pilot queries and the column weights of their P.

    q_pil (B, H, S, P) scaled queries, k and v (B, H, T, P), bias (B, 1, 1, T) additive key bias
    (0 or NEG) or None, act (B, 1, S, 1) 1.0 for active pilot slots. Returns o_pil (B, H, S, P)
    and the non-differentiable col_sq (B, H, T) = sum_t act_t P_tj^2. ``drop`` (a :class:`Dropout`
    or None) drops P's entries before they meet v; col_sq stays that of the undropped P.
    """

    @staticmethod
    def forward(ctx, q_pil, k, v, bias, act, drop=None):
        B, H, S, P = q_pil.shape
        T = k.shape[2]
        kt = k.transpose(-1, -2)  # (B, H, P, T)
        o = torch.empty_like(q_pil)  # (B, H, S, P)
        lse = torch.empty(B, H, S, 1, dtype=q_pil.dtype, device=q_pil.device)  # (B, H, S, 1)
        col_sq = torch.zeros(B, H, 1, T, dtype=q_pil.dtype, device=q_pil.device)  # (B, H, 1, T)
        for a, b in _tiles(S, B * H * T, PILOT_TILE):
            e = torch.matmul(q_pil[:, :, a:b], kt)  # (B, H, r, T) logits
            if bias is not None:
                e.add_(bias)
            m = e.amax(dim=-1, keepdim=True)  # (B, H, r, 1)
            e.sub_(m).exp_()
            z = e.sum(dim=-1, keepdim=True)  # (B, H, r, 1)
            keep = _keep_scale(drop, q_pil, (a, b), (0, T), (1, S))  # (B, H, r, T) or None
            o[:, :, a:b] = torch.matmul(e if keep is None else e * keep, v).div_(z)  # (B, H, r, P)
            lse[:, :, a:b] = m + z.log()
            w = (act[:, :, a:b] / z.square()).transpose(-1, -2)  # (B, H, 1, r)
            col_sq += torch.matmul(w, e.square_())  # (B, H, 1, T)
        ctx.save_for_backward(q_pil, k, v, bias, o, lse)
        ctx.drop = drop
        ctx.mark_non_differentiable(col_sq)
        return o, col_sq.squeeze(-2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, _d_col):
        # tiles of key columns here: every product then has an inner dimension of S or of the tile
        q_pil, k, v, bias, o, lse = ctx.saved_tensors
        B, H, S, P = q_pil.shape
        T = k.shape[2]
        delta = (d_o * o).sum(dim=-1, keepdim=True)  # (B, H, S, 1)
        dq = torch.zeros(B * H, S, P, dtype=q_pil.dtype, device=q_pil.device)  # (B*H, S, P)
        dk = torch.empty_like(k)  # (B, H, T, P)
        dv = torch.empty_like(v)  # (B, H, T, P)
        for a, b in _tiles(T, B * H * S, TILE):
            p = torch.matmul(q_pil, k[:, :, a:b].transpose(-1, -2))  # (B, H, S, c)
            if bias is not None:
                p.add_(bias[..., a:b])
            p.sub_(lse).exp_()  # probabilities
            keep = _keep_scale(ctx.drop, q_pil, (0, S), (a, b), (1, S))  # (B, H, S, c) or None
            pk = p if keep is None else p * keep  # the weights that met V
            dv[:, :, a:b] = torch.matmul(pk.transpose(-1, -2), d_o)  # (B, H, c, P) = P^T dO
            ds = torch.matmul(d_o, v[:, :, a:b].transpose(-1, -2))  # (B, H, S, c) dP
            if keep is not None:
                ds.mul_(keep)  # delta = rowsum(dO * o) is still rowsum(P * dP) with the mask in dP
            ds.sub_(delta).mul_(p)  # dS = P * (dP - delta)
            dq.baddbmm_(_flat(ds), _flat(k[:, :, a:b].contiguous()))  # += dS K
            dk[:, :, a:b] = torch.matmul(ds.transpose(-1, -2), q_pil)  # (B, H, c, P) = dS^T Q
        return dq.view(B, H, S, P), dk, dv, None, None, None


class SketchedAttention(torch.autograd.Function):
    """The sampled estimator with geometric-mean imputation for every query, then the pilot rows.

    q (B, H, T, P); k_s (B, H, S, P) sampled keys (scaled); v_s (B, H, S, P) sampled values (zero
    on inactive slots); mu (B, H, T, 1) the mean logit over the sample; rest (B, H, 1, P) the sum
    of the unsampled values; act (B, 1, 1, S) active-slot indicator or None (all active); n_rest
    (B, 1, 1, 1) the number of unsampled real columns. With l_ij = q_i . k_j, m_i = max_j l_ij:
    o_i = (sum_j e_ij v_j + g_i rest) / (sum_j act_j e_ij + g_i n_rest), e_ij = exp(l_ij - m_i),
    g_i = exp(mu_i - m_i); the shift m_i cancels and gets no gradient. Then the rows target[b, t]
    are overwritten by o_pil[b, :, canon[b, t]] (the canonical slot of that pilot position, so
    duplicate writes agree); only canonical slots (is_canon) receive the gradient of their row.
    The result is a (B, H, T, P) view of a (B, T, H, P) buffer, so merging heads needs no copy.
    ``drop`` (a :class:`Dropout` or None) drops the e_ij that meet v_s (not those in the denominator).
    """

    @staticmethod
    def forward(ctx, q, k_s, v_s, mu, rest, act, n_rest, o_pil, target, canon, is_canon, drop=None):
        B, H, T, P = q.shape
        S = k_s.shape[2]
        kt = k_s.transpose(-1, -2)  # (B, H, P, S)
        o = torch.empty(B, T, H, P, dtype=q.dtype, device=q.device).permute(0, 2, 1, 3)  # (B, H, T, P) view
        shift = torch.empty(B, H, T, 1, dtype=q.dtype, device=q.device)  # (B, H, T, 1)
        den = torch.empty(B, H, T, 1, dtype=q.dtype, device=q.device)  # (B, H, T, 1)
        act_col = act.transpose(-1, -2) if act is not None else None  # (B, 1, S, 1)
        for a, b in _tiles(T, B * H * S, TILE):
            e = torch.matmul(q[:, :, a:b], kt)  # (B, H, r, S) logits
            m = e.amax(dim=-1, keepdim=True)  # (B, H, r, 1)
            e.sub_(m).exp_()
            g = torch.exp(mu[:, :, a:b] - m)  # (B, H, r, 1)
            e_sum = torch.matmul(e, act_col) if act_col is not None else e.sum(dim=-1, keepdim=True)
            den[:, :, a:b] = e_sum + g * n_rest
            keep = _keep_scale(drop, q, (a, b), (0, S), (S, 1))  # (B, H, r, S) or None
            ev = e if keep is None else e * keep  # dropout after the normalisation: den is undropped
            o[:, :, a:b] = (torch.matmul(ev, v_s) + g * rest).div_(den[:, :, a:b])  # (B, H, r, P)
            shift[:, :, a:b] = m
        rows = target[:, None, :, None].expand(B, H, S, P)  # (B, H, S, P)
        o.scatter_(2, rows, o_pil.gather(2, canon[:, None, :, None].expand(B, H, S, P)))
        ctx.save_for_backward(q, k_s, v_s, mu, rest, act, n_rest, shift, den, o, target, is_canon)
        ctx.drop = drop
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o):
        q, k_s, v_s, mu, rest, act, n_rest, shift, den, o, target, is_canon = ctx.saved_tensors
        B, H, T, P = q.shape
        S = k_s.shape[2]
        rows = target[:, None, :, None].expand(B, H, S, P)  # (B, H, S, P)
        d_pil = d_o.gather(2, rows) * is_canon[:, None, :, None]  # (B, H, S, P)
        d_num = d_o / den  # (B, H, T, P)
        d_num.scatter_(2, rows, 0.0)  # the pilot rows' estimates were overwritten
        d_den = -(d_num * o).sum(dim=-1, keepdim=True)  # (B, H, T, 1)
        g = torch.exp(mu - shift)  # (B, H, T, 1)
        d_mu = ((d_num * rest).sum(dim=-1, keepdim=True) + d_den * n_rest) * g  # (B, H, T, 1)
        d_rest = (g * d_num).sum(dim=-2, keepdim=True)  # (B, H, 1, P)
        kt, vt = k_s.transpose(-1, -2), v_s.transpose(-1, -2)  # (B, H, P, S)
        dq = torch.empty_like(q)
        dk = torch.zeros(B * H, S, P, dtype=q.dtype, device=q.device)  # (B*H, S, P)
        dv = torch.zeros(B * H, S, P, dtype=q.dtype, device=q.device)  # (B*H, S, P)
        for a, b in _tiles(T, B * H * S, TILE):
            e = torch.matmul(q[:, :, a:b], kt)  # (B, H, r, S)
            e.sub_(shift[:, :, a:b]).exp_()
            keep = _keep_scale(ctx.drop, q, (a, b), (0, S), (S, 1))  # (B, H, r, S) or None
            ev = e if keep is None else e * keep
            dv.baddbmm_(_flat(ev).transpose(-1, -2), _flat(d_num[:, :, a:b]))  # += E^T dNum
            dl = torch.matmul(d_num[:, :, a:b], vt)  # (B, H, r, S) dE
            if keep is not None:
                dl.mul_(keep)  # the numerator's weights were dropped, the denominator's were not
            if act is not None:
                dl.addcmul_(d_den[:, :, a:b], act)
            else:
                dl.add_(d_den[:, :, a:b])
            dl.mul_(e)  # dL = dE * E
            dq[:, :, a:b] = torch.matmul(dl, k_s)  # (B, H, r, P)
            dk.baddbmm_(_flat(dl).transpose(-1, -2), _flat(q[:, :, a:b].contiguous()))  # += dL^T Q
        d_ks, d_vs = dk.view(B, H, S, P), dv.view(B, H, S, P)
        return dq, d_ks, d_vs, d_mu, d_rest, None, None, d_pil, None, None, None, None


def skein_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    key: int | torch.Tensor,
    sketch_size: int | None,
    scale: float = 1.0,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, SkeinDraw]:
    """Skeinformer's estimate of softmax(scale · q k^T) v for q, k, v (B, H, T, P).

    ``mask`` bool (B, T) over keys (True = real) or None; ``key`` the 64-bit key of this call's
    draws (a Python int or a 0-d int64 tensor on q's device). Every draw is a counter-based function of (key, head, position or slot), so sequence b's
    result depends only on its own tokens and mask. Returns (o (B, H, T, P), the draws); o is a
    view of a (B, T, H, P) buffer. ``dropout_p`` (the caller passes 0 outside training) drops the
    pilot rows' softmax weights and the sampled columns' weights after their normalisation (the
    imputed unsampled columns and the denominators are kept), with masks drawn from ``key``.
    """
    B, H, T, P = q.shape
    dev, dt = q.device, q.dtype
    keep = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=dev)  # (B, T)

    # per-sequence sketch size d_b (>= 1 so an empty sequence stays finite; the caller zeroes it)
    n_real = keep.sum(dim=-1)  # (B,)
    if sketch_size is None:
        want = (4.0 * torch.log(n_real.clamp_min(1).to(torch.float64))).long()  # int(4 ln N): truncation
    else:
        want = torch.full_like(n_real, sketch_size)
    d_b = torch.minimum(want, n_real).clamp_min(1)  # (B,)
    S = sketch_width(sketch_size, T)  # static sample width; slots >= d_b are inactive
    slots = torch.arange(S, device=dev)  # (S,)
    active = slots[None, :] < d_b[:, None]  # (B, S)
    heads = torch.arange(H, device=dev)

    # pilot rows: uniform ranks among the real tokens -> positions (any padding layout)
    u = counter_uniform(key, torch.zeros((), dtype=torch.int64, device=dev), slots)  # (S,)
    rank = (u[None, :] * n_real[:, None]).floor().long()  # (B, S)
    rank = torch.minimum(rank, (n_real[:, None] - 1).clamp_min(0))
    cum = torch.cumsum(keep.long(), dim=-1)  # (B, T)
    pil_pos = torch.searchsorted(cum, rank + 1).clamp_max(T - 1)  # (B, S)
    q_pil = q.gather(2, pil_pos[:, None, :, None].expand(B, H, S, P)) * scale  # (B, H, S, P)
    bias = None
    if mask is not None:  # padded keys: exp(NEG) = 0 in the pilot rows
        bias = torch.zeros(B, 1, 1, T, dtype=dt, device=dev).masked_fill_(~mask[:, None, None, :], neg_value(dt))
    # o_pil: the exact attention rows of the pilots; col_sq: sum over active pilots of P_tj^2
    drop = (Dropout(key, float(dropout_p), 0), Dropout(key, float(dropout_p), 1)) if dropout_p else (None, None)
    o_pil, col_sq = PilotAttention.apply(q_pil, k, v, bias, active[:, None, :, None].to(dt), drop[1])

    # column sample: Gumbel-top-k over log(||Ppil[:, j]|| ||v_j||), i.e. without replacement
    with torch.no_grad():
        w = col_sq.sqrt() * torch.linalg.vector_norm(v, dim=-1)  # (B, H, T)
        logw = torch.log(w.clamp_min_(torch.finfo(dt).tiny))  # real zero-weight columns come last
        logw = logw.masked_fill_(~keep[:, None, :], float("-inf"))  # pads: probability 0
        u_col = counter_uniform(key, heads[:, None] + 1, torch.arange(T, device=dev)[None, :])  # (H, T)
        gumbel = -torch.log(-torch.log(u_col)).to(dt)  # (H, T)
        idx = torch.topk(logw + gumbel, S, dim=-1, sorted=True).indices  # (B, H, S), best first
    k_s = k.gather(2, idx[..., None].expand(B, H, S, P)) * scale  # (B, H, S, P)
    v_s = v.gather(2, idx[..., None].expand(B, H, S, P))  # (B, H, S, P)
    if mask is not None:
        # Inactive slots (d_b < S) repeat slot 0's key, so the row max over all slots is the max over
        # the sample and no (T x S) masking pass is needed; their values are zeroed and the
        # denominator counts active slots only.
        on = active[:, None, :, None]  # (B, 1, S, 1)
        k_s = torch.where(on, k_s, k_s[:, :, :1])  # (B, H, S, P)
        v_s = v_s * on.to(dt)  # (B, H, S, P)
        k_sum = (k_s * on.to(dt)).sum(dim=-2, keepdim=True)  # (B, H, 1, P)
        v_all = torch.matmul(mask[:, None, None, :].to(dt), v)  # (B, H, 1, P) sum over real tokens
    else:
        k_sum = k_s.sum(dim=-2, keepdim=True)  # (B, H, 1, P)
        v_all = v.sum(dim=-2, keepdim=True)  # (B, H, 1, P)

    # sampled attention with geometric-mean imputation of the unsampled columns
    d_f = d_b.to(dt)[:, None, None, None]  # (B, 1, 1, 1)
    mean_logit = torch.matmul(q, k_sum.transpose(-1, -2)) / d_f  # (B, H, T, 1)
    n_rest = (n_real - d_b).clamp_min(0).to(dt)[:, None, None, None]  # (B, 1, 1, 1) unsampled columns
    rest = (v_all - v_s.sum(dim=-2, keepdim=True)) * (n_rest > 0).to(dt)  # (B, H, 1, P); 0 if all sampled
    act = active[:, None, None, :].to(dt) if mask is not None else None  # (B, 1, 1, S)

    # pilot rows are exact: each position keeps the row of its first active slot (slot 0 is
    # always active; inactive slots rewrite slot 0's row)
    slot_of = torch.full((B, T), S, dtype=torch.long, device=dev)
    slot_of.scatter_reduce_(1, pil_pos, torch.where(active, slots, S), reduce="amin")  # (B, T)
    first = slot_of.gather(1, pil_pos)  # (B, S) first active slot at each slot's position
    canon = torch.where(active, first, torch.zeros_like(first))  # (B, S)
    target = pil_pos.gather(1, canon)  # (B, S)
    is_canon = (canon == slots).to(dt)  # (B, S)
    o = SketchedAttention.apply(q, k_s, v_s, mean_logit, rest, act, n_rest, o_pil, target, canon, is_canon, drop[0])
    return o, SkeinDraw(pil_pos, idx, d_b)

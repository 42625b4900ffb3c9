"""TransNormer DiagAttention: attention restricted to non-overlapping blocks of ``block_size`` tokens.

Paper
    Qin, Han, Sun, Li, Kong, Barnes, Zhong, "The Devil in Linear Transformer", EMNLP 2022,
    arXiv 2210.10340. Code: OpenNLPLab/fairseq-evo (``norm_local_attention.py``, chunk variant)
    and OpenNLPLab/lra.

Mechanism
    The sequence is cut into blocks of c = ``block_size`` tokens (right-padded internally to a
    multiple of c); token i attends only to tokens of its own block. Per head and block the
    scores are ``(Q / sqrt(p)) K^T``, with URPE (Householder map from ``seed``, learned rotary
    frequencies) applied to Q and K at positions 0..c-1 within the block. Variant t1 uses
    ``ReLU(scores)`` as weights (no normalisation) followed by SimpleRMSNorm of the merged
    output; t2 uses ``softmax(scores)`` and no norm. Causal mode drops keys j > i inside the block.

    Precision: the block scores, softmax/norm and the rotation run in at least fp32.

Deviations
    Padding: padded keys get weight 0 (t1) or a large negative logit (t2), so real outputs do not
    depend on padding (the reference accepts the mask and ignores it; ``faithful_mask=True``
    reproduces that, including the zero rows added to reach a multiple of c taking softmax mass).
    The causal mask is applied before the softmax (the LRA code applies it after).
    ``attention_dropout`` (default 0, training only) drops the block weights (ReLU for t1, softmax
    for t2) after masking and before they meet V, where fairseq-evo's ``NormLocalAttention`` applies
    its dropout module in the chunk variant. Default block size 64 as in the T1/T2 configs (the module's own default is 32).
    The output normalisation of t1 is SimpleRMSNorm as in the language models (LRA: BatchNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.base import (
    Complexity,
    MixerConfig,
    MixerSpec,
    TokenMixer,
    attention_dropout_field,
    attention_dropout_p,
    cfg,
    ceil_div,
    check_choice,
    check_inputs,
    check_positive_int,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import (
    chunks_of,
    compute_dtype,
    householder_vector,
    linear_flops,
    merge_heads,
    neg_value,
    rotary_frequencies,
    simple_rms_norm,
    split_heads,
    urpe,
)
from zoo.registry import register
from zoo.state import StateSize, block_segments

VARIANTS = ("t1", "t2")


@dataclass(frozen=True)
class DiagAttentionConfig(MixerConfig):
    variant: str = cfg("t1", "t1: ReLU weights + SimpleRMSNorm | t2: softmax weights, no norm")
    block_size: int = cfg(64, "tokens per attention block c (the sequence is padded to a multiple)")
    urpe: bool = cfg(True, "unitary relative positional encoding on Q, K (positions within the block)")
    faithful_mask: bool = cfg(False, "ignore the padding mask in the mixing, as the reference does")
    seed: int = cfg(0, "seed of the Householder vector drawn at init (URPE)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_choice("variant", self.variant, VARIANTS)
        check_positive_int("block_size", self.block_size)
        check_choice("urpe", self.urpe, (True, False))
        check_choice("faithful_mask", self.faithful_mask, (True, False))
        check_positive_int("seed", self.seed, minimum=0)
        if self.urpe and self.head_dim % 2:
            raise ZooValueError(
                f"transnormer_diag: urpe: expected an even head width dim/heads for the rotary pairs, "
                f"got dim={self.dim}, heads={self.heads} (head width {self.head_dim})"
            )

    @classmethod
    def tiny(cls) -> "DiagAttentionConfig":
        return cls(dim=16, heads=2, block_size=8)


def diag_flops(c: DiagAttentionConfig, B: int, T: int, causal: bool = False) -> float:
    Tp = ceil_div(T, c.block_size) * c.block_size
    # Q K^T and weights @ V inside blocks: 2 * (2 B H Tp c P); causal computes the full blocks too
    return linear_flops(B, T, c.dim, c.dim, count=4) + 4.0 * B * Tp * c.block_size * c.dim


@register
class DiagAttentionMixer(TokenMixer):
    spec = MixerSpec(
        name="transnormer_diag",
        title="The Devil in Linear Transformer",
        arxiv="2210.10340",
        year=2022,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=diag_flops,
        cost_note="O(T·c·D) time, c = block_size; memory O(B·H·T·c)",
        causal=True,
        key_padding_mask=True,
        deviations=(
            "padded keys masked (reference ignores masks; faithful_mask=True reproduces it); causal mask "
            "before the softmax; attention dropout (off by default) on the block weights; SimpleRMSNorm for t1 as in the LMs (LRA: BatchNorm)"
        ),
        state=StateSize.WINDOW,  # the current block's keys and values (< block_size tokens)
    )
    Config = DiagAttentionConfig

    def __init__(self, config: DiagAttentionConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, P = config.dim, config.head_dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        if config.urpe:
            self.register_buffer("householder_u", torch.empty(P, **kw))  # (P,)
            self.theta = nn.Parameter(torch.empty(P // 2, **kw))  # (P/2,)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if self.config.urpe:
            P = self.config.head_dim
            self.householder_u.copy_(householder_vector(P, self.config.seed))  # fp64 draw, cast
            self.theta.copy_(rotary_frequencies(P))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: True runs the causal variant (position i sees j <= i).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        B, T, _ = x.shape
        C, P = c.block_size, c.head_dim
        dt = compute_dtype(x.dtype)
        q = split_heads(self.q_proj(x), c.heads).to(dt) * P**-0.5  # (B, H, T, P)
        k = split_heads(self.k_proj(x), c.heads).to(dt)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, T, P)
        N, pad = chunks_of(T, C)
        # zero rows after the projection, as the reference pads
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, n, P), n = T + pad
        qb = q.reshape(B, c.heads, N, C, P)  # (B, H, N, C, P)
        kb = k.reshape(B, c.heads, N, C, P)  # (B, H, N, C, P)
        vb = v.reshape(B, c.heads, N, C, P)  # (B, H, N, C, P)
        if c.urpe:
            positions = torch.arange(C, device=x.device)  # offsets within each block
            qb = urpe(qb, self.householder_u, self.theta, positions)  # (B, H, N, C, P)
            kb = urpe(kb, self.householder_u, self.theta, positions)  # (B, H, N, C, P)
        scores = torch.matmul(qb, kb.transpose(-1, -2))  # (B, H, N, C, C)

        allowed = None  # bool broadcastable to (B, H, N, C, C): key j may be used by query i
        if not c.faithful_mask and (mask is not None or pad):
            keys = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
            keys = F.pad(keys, (0, pad), value=False)  # (B, n)
            allowed = keys.reshape(B, 1, N, 1, C)  # (B, 1, N, 1, C)
        if causal:
            tril = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()  # (C, C)
            allowed = tril if allowed is None else allowed & tril

        if c.variant == "t1":
            weights = torch.relu(scores)  # (B, H, N, C, C)
            if allowed is not None:
                weights = weights.masked_fill(~allowed, 0.0)
        else:
            if allowed is not None:
                # finite NEG: a fully padded block gives a uniform (then zeroed) row, not NaN
                scores = scores.masked_fill(~allowed, neg_value(dt))
            weights = torch.softmax(scores, dim=-1)  # (B, H, N, C, C)
        p = attention_dropout_p(self)
        if p:
            weights = F.dropout(weights, p)  # (B, H, N, C, C), as the reference's dropout_module
        o = torch.matmul(weights, vb)  # (B, H, N, C, P)
        o = o.reshape(B, c.heads, N * C, P)[:, :, :T]  # (B, H, T, P)
        y = merge_heads(o)  # (B, T, D)
        if c.variant == "t1":
            y = simple_rms_norm(y)
        y = self.out_proj(y.to(x.dtype))  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the current block's (URPE-rotated) keys and values -----------------------

    def _state_tensors(self, batch, device, dtype):
        H, P, dt = self.config.heads, self.config.head_dim, compute_dtype(dtype)
        return {
            "k": torch.zeros(batch, H, 0, P, device=device, dtype=dt),  # (B, H, r, P), r < block
            "v": torch.zeros(batch, H, 0, P, device=device, dtype=dt),  # (B, H, r, P)
            "keys": torch.zeros(batch, 0, dtype=torch.bool, device=device),  # (B, r)
        }

    def _advance(self, x, mask, state):
        c, t = self.config, state.tensors
        dt = t["k"].dtype
        q = split_heads(self.q_proj(x), c.heads).to(dt) * c.head_dim**-0.5  # (B, H, n, P)
        k = split_heads(self.k_proj(x), c.heads).to(dt)  # (B, H, n, P)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, n, P)
        keys = mask if mask is not None and not c.faithful_mask else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        outs = []
        for s, e, r in block_segments(state.position, x.shape[1], c.block_size):
            if r == 0:  # a new block: earlier keys are never seen again
                t["k"], t["v"], t["keys"] = t["k"][:, :, :0], t["v"][:, :, :0], t["keys"][:, :0]
            qs, ks = q[:, :, s:e], k[:, :, s:e]  # (B, H, e - s, P)
            if c.urpe:
                positions = torch.arange(r, r + e - s, device=x.device)  # offsets within the block
                qs = urpe(qs, self.householder_u, self.theta, positions)
                ks = urpe(ks, self.householder_u, self.theta, positions)
            t["k"] = torch.cat([t["k"], ks], dim=2)  # (B, H, r + e - s, P)
            t["v"] = torch.cat([t["v"], v[:, :, s:e]], dim=2)  # (B, H, r + e - s, P)
            t["keys"] = torch.cat([t["keys"], keys[:, s:e]], dim=1)  # (B, r + e - s)
            outs.append(self._block_rows(qs, t["k"], t["v"], t["keys"], r))  # (B, H, e - s, P)
        y = merge_heads(torch.cat(outs, dim=2))  # (B, n, D)
        if c.variant == "t1":
            y = simple_rms_norm(y)
        return self.out_proj(y.to(x.dtype))  # (B, n, D)

    def _block_rows(self, q, k, v, keys, offset):
        """Rows offset.. of one block: q (B, H, m, P) over the block's keys so far k, v (B, H, L, P)."""
        m, L = q.shape[2], k.shape[2]
        qpos = torch.arange(offset, offset + m, device=q.device)[:, None]  # (m, 1)
        allowed = keys[:, None, None, :] & (torch.arange(L, device=q.device)[None, :] <= qpos)  # (B, 1, m, L)
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, m, L)
        if self.config.variant == "t1":
            weights = torch.relu(scores).masked_fill(~allowed, 0.0)
        else:
            weights = torch.softmax(scores.masked_fill(~allowed, neg_value(q.dtype)), dim=-1)
        return torch.matmul(weights, v)  # (B, H, m, P)

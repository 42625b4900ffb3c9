"""Gated DeltaNet: the delta rule with a data-dependent scalar decay per head, chunked (WY form).

Paper
    Yang, Kautz, Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025,
    arXiv 2412.06464. Layer as in fla-org/flash-linear-attention (``fla/layers/gated_deltanet.py``).

Mechanism
    Per head a p x p state (row convention, ``o_t = q_t S_t``, q scaled by p^-1/2) is decayed,
    then corrected towards the new key-value pair: ``S_t = a_t S_{t-1} + beta_t k_t^T (v_t -
    a_t k_t S_{t-1})`` with ``beta_t = sigmoid(W_b x_t)`` and ``log a_t = -exp(A_log) *
    softplus(W_a x_t + dt_bias)`` (Mamba-2's parameterisation: A drawn in [1, 16], dt_bias the
    inverse softplus of a dt log-uniform in [1e-3, 0.1]). q, k, v: bias-free projections, a
    depthwise causal short convolution and SiLU; q, k L2-normalised per head. Output:
    ``RMSNorm(o) * SiLU(W_g x)`` per head, then W_O. Fast path: the chunked WY form of
    :func:`zoo.mixers.deltanet.delta_rule_chunked` with the decays folded in (cumulative log
    decays inside a chunk, exp of differences <= 0 only, so nothing overflows).

Deviations
    * Bidirectional (the default): forward + backward scan over the reversed sequence with
      **shared parameters** (projections, convolution, decay and beta), summed before the gated
      norm; the backward scan's short convolution looks at the next tokens. fla has none.
    * Padding: beta = 0 and log decay = 0 on padded tokens (no write, no decay: the state passes
      through unchanged); zero projections before the short convolutions.
    * k and v heads are both dim / heads wide (fla's default expands v by 2 and fixes 256-wide
      heads); the output gate is per channel as in fla.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.base import Complexity, MixerSpec, TokenMixer, check_inputs, zero_padded
from zoo.functional import compute_dtype, merge_heads, split_heads
from zoo.mixers.deltanet import (
    DeltaNetConfig,
    delta_flops,
    delta_rule_chunked,
    delta_scans,
    delta_state_step,
    delta_state_tensors,
    init_short_conv,
    per_head_gate,
    reset_short_conv,
    rms_norm,
)
from zoo.registry import register
from zoo.state import StateSize


def gated_delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal gated delta rule, chunked; q, k (B, H, T, K), v (B, H, T, V), g (log decay <= 0)
    and beta (B, H, T). Argument order of fla's ``naive_chunk_gated_delta_rule`` (whose layout is
    (B, T, H, .): transpose dims 1 and 2). Returns o (B, H, T, V)."""
    return delta_rule_chunked(q, k, v, beta, g, chunk_size, scale)


def gated_delta_rule_scan(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, log_g: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """Gated DeltaNet's swappable causal core: q (already scaled), k (B, H, T, K), v (B, H, T, V),
    beta and log_g (B, H, T) -> o (B, H, T, V); the chunked WY form with scale 1."""
    return delta_rule_chunked(q, k, v, beta, log_g, chunk, scale=1.0)


@dataclass(frozen=True)
class GatedDeltaNetConfig(DeltaNetConfig):
    @classmethod
    def tiny(cls) -> "GatedDeltaNetConfig":
        return cls(dim=16, heads=2, chunk_size=4)


def gated_deltanet_flops(c: GatedDeltaNetConfig, B: int, T: int, causal: bool = False) -> float:
    return delta_flops(c, B, T, causal, gated=True)


def mamba_decay_init(heads: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_log, dt_bias) per head: A ~ U[1, 16]; dt log-uniform in [1e-3, 0.1], stored as softplus^-1."""
    A = torch.empty(heads, device=device, dtype=torch.float32).uniform_(1.0, 16.0)
    lo, hi = math.log(1e-3), math.log(0.1)
    dt = torch.exp(torch.rand(heads, device=device, dtype=torch.float32) * (hi - lo) + lo).clamp_min(1e-4)
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # softplus(dt_bias) = dt
    return A.log().to(dtype), dt_bias.to(dtype)


@register
class GatedDeltaNetMixer(TokenMixer):
    spec = MixerSpec(
        name="gated_deltanet",
        title="Gated Delta Networks: Improving Mamba2 with Delta Rule",
        arxiv="2412.06464",
        year=2025,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=gated_deltanet_flops,
        cost_note=(
            "O(T·(c + p)·D) time, c = chunk_size, p = head width (decayed WY solve inside chunks, "
            "p x p state between them); memory O(B·T·(c + D)) + O(B·H·(T/c)·p^2); bidirectional = 2 scans"
        ),
        causal=True,
        key_padding_mask=True,
        deviations=(
            "bidirectional = forward + backward scan with shared parameters, summed before the gated "
            "norm (fla has none); padded tokens get beta = 0 and log decay 0; k and v heads dim/heads "
            "wide (fla: expand_v=2, 256-wide heads)"
        ),
        state=StateSize.CONSTANT,  # the p x p gated delta-rule state per head and the short convs' last inputs
    )
    Config = GatedDeltaNetConfig
    # the causal core (q, k, v, beta, log_g, chunk=...) -> o, q pre-scaled; a benchmark may swap it
    scan = staticmethod(gated_delta_rule_scan)

    def __init__(self, config: GatedDeltaNetConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, H = config.dim, config.heads
        self.q_proj = nn.Linear(D, D, bias=False, **kw)
        self.k_proj = nn.Linear(D, D, bias=False, **kw)
        self.v_proj = nn.Linear(D, D, bias=False, **kw)
        self.a_proj = nn.Linear(D, H, bias=False, **kw)  # decay rate input, one per head
        self.b_proj = nn.Linear(D, H, bias=False, **kw)  # beta = sigmoid(W_b x)
        self.g_proj = nn.Linear(D, D, bias=False, **kw)  # output gate
        self.q_conv = init_short_conv(D, config.conv_size, **kw)
        self.k_conv = init_short_conv(D, config.conv_size, **kw)
        self.v_conv = init_short_conv(D, config.conv_size, **kw)
        self.A_log = nn.Parameter(torch.empty(H, **kw))  # log(-A), (H,)
        self.dt_bias = nn.Parameter(torch.empty(H, **kw))  # softplus^-1 of the initial rate, (H,)
        self.o_norm = nn.Parameter(torch.empty(config.head_dim, **kw))  # RMSNorm gain, shared by heads
        self.out_proj = nn.Linear(D, D, bias=False, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for weight in (self.q_conv, self.k_conv, self.v_conv):
            reset_short_conv(weight)
        A_log, dt_bias = mamba_decay_init(self.config.heads, self.A_log.device, self.A_log.dtype)
        self.A_log.copy_(A_log)
        self.dt_bias.copy_(dt_bias)
        nn.init.ones_(self.o_norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero,
        padded tokens neither write to nor decay the state (beta = 0, log decay 0).
        causal: True runs the causal gated delta-rule scan (position i sees j <= i); False
        (default) sums a forward and a backward scan.
        Extra inputs: none. Precision: the scans, decays and the gated norm run in at least fp32.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        dt = compute_dtype(x.dtype)
        beta, g = self._gates(x, mask, dt)  # (B, H, T) each
        o = delta_scans(self, x, mask, beta, g, causal)  # (B, H, T, P)
        gate = F.silu(split_heads(self.g_proj(x).to(dt), c.heads))  # (B, H, T, P)
        o = rms_norm(o, self.o_norm.to(dt), c.norm_eps) * gate  # (B, H, T, P)
        y = self.out_proj(merge_heads(o).to(x.dtype))  # (B, T, D)
        return zero_padded(y, mask)

    def _gates(self, x: torch.Tensor, mask: torch.Tensor | None, dt: torch.dtype):
        """(beta, log decay), each (B, H, T): 0 on padded tokens, so they neither write nor decay."""
        beta = per_head_gate(torch.sigmoid(self.b_proj(x).to(dt)), mask, 0.0)  # (B, H, T)
        rate = F.softplus(self.a_proj(x).to(dt) + self.dt_bias.to(dt))  # (B, T, H)
        return beta, per_head_gate(-self.A_log.to(dt).exp() * rate, mask, 0.0)

    # -- generation: deltanet's state (p x p per head, short-conv tails), with the decay ---------

    def _state_tensors(self, batch, device, dtype):
        return delta_state_tensors(self, batch, device, dtype)

    def _advance(self, x, mask, state):
        c = self.config
        dt = state.tensors["S"].dtype
        beta, g = self._gates(x, mask, dt)  # (B, H, n) each
        gate = F.silu(split_heads(self.g_proj(x).to(dt), c.heads))  # (B, H, n, P)
        o = rms_norm(delta_state_step(self, x, mask, state, beta, g), self.o_norm.to(dt), c.norm_eps) * gate
        return self.out_proj(merge_heads(o).to(x.dtype))  # (B, n, D)

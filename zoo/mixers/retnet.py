"""RetNet multi-scale retention: linear attention with a fixed per-head exponential decay.

Paper
    Sun, Dong, Huang, Ma, Xia, Xue, Wang, Wei, "Retentive Network: A Successor to Transformer for
    Large Language Models", 2023, arXiv 2307.08621. Code: microsoft/torchscale
    (``multiscale_retention.py``); fla-org/flash-linear-attention (``fla/layers/multiscale_retention.py``,
    pure-PyTorch oracle ``fla/ops/retention/naive.py``).

Mechanism
    Per head h, ``q = x W_Q / sqrt(K)``, ``k = x W_K``, ``v = x W_V`` (value width ``expand_v`` x
    the key width) and a fixed decay ``gamma_h = 1 - 2^(-5 - h)``. Causal retention
    ``o_t = sum_{s<=t} gamma_h^(t-s) (q_t . k_s) v_s``: parallel form (a T x T decay matrix, in the
    oracle only), recurrent form (``S_t = gamma S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t``, the
    oracle) and chunked form (the fast path, ``chunk_size`` tokens per chunk; ``zoo.scan``) are
    equal. Heads are normalised separately (GroupNorm with one group per head, affine), gated by
    ``swish(x W_G)`` and projected back to D by W_O.

Deviations
    Positional encoding: none (the paper uses xPos on q and k; fla's layer uses rotary): the decay
    alone orders tokens. The paper's extra retention-score normalisations (dividing by the decay
    row sums and by max(|row sum|, 1)) are dropped: GroupNorm cancels a per-row scale up to its eps.
    Bidirectional (default, not in the paper): a forward and a backward scan with the same
    parameters, summed, the token itself counted once, so the weight of s is ``gamma^|t-s|``.
    Padding: padded tokens have k = v = 0 and decay 1 (the state passes through them unchanged).
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
    cfg,
    check_inputs,
    check_positive_int,
    check_range,
    zero_padded,
)
from zoo.functional import compute_dtype, linear_flops, merge_heads, split_heads
from zoo.registry import register
from zoo.state import StateSize, decayed_attention_step
from zoo.scan import bidirectional_scan, chunked_decay_attention, decay_scan_flops, mask_scan_inputs


@dataclass(frozen=True)
class RetNetConfig(MixerConfig):
    expand_v: int = cfg(2, "value (and gate) width = expand_v x dim, as in the paper")
    chunk_size: int = cfg(64, "tokens per chunk of the chunked retention")
    norm_eps: float = cfg(1e-5, "eps of the per-head GroupNorm")

    def validate(self) -> None:
        check_positive_int("expand_v", self.expand_v)
        check_positive_int("chunk_size", self.chunk_size)
        check_range("norm_eps", self.norm_eps, 1e-12, 1.0)

    @classmethod
    def tiny(cls) -> "RetNetConfig":
        return cls(dim=16, heads=2, chunk_size=4)


def retention_log_decay(heads: int, device=None, dtype=None) -> torch.Tensor:
    """log gamma_h = log(1 - 2^(-5 - h)), h = 0 .. heads - 1, shape (heads,)."""
    h = torch.arange(heads, device=device, dtype=torch.float64)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype or torch.get_default_dtype())


def retnet_flops(c: RetNetConfig, B: int, T: int, causal: bool = False) -> float:
    dv = c.expand_v * c.dim
    proj = linear_flops(B, T, c.dim, c.dim, count=2) + linear_flops(B, T, c.dim, dv, count=2)
    proj += linear_flops(B, T, dv, c.dim)
    return proj + decay_scan_flops(B, T, c.heads, c.head_dim, dv // c.heads, c.chunk_size, causal)


@register
class RetNetMixer(TokenMixer):
    spec = MixerSpec(
        name="retnet",
        title="Retentive Network: A Successor to Transformer for Large Language Models",
        arxiv="2307.08621",
        year=2023,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=retnet_flops,
        cost_note=(
            "O(T·(c·(p + e·p) + e·p^2)·h) mixing, c = chunk_size, p = head width, e = expand_v; "
            "memory O(B·h·T·c + B·h·(T/c)·e·p^2)"
        ),
        causal=True,
        key_padding_mask=True,
        deviations=(
            "no xPos (decay only); no score normalisation before GroupNorm; bidirectional = forward "
            "+ backward scan with shared weights (weight gamma^|t-s|); padded tokens: k = v = 0, decay 1"
        ),
        state=StateSize.CONSTANT,  # the K x V retention state per head
    )
    Config = RetNetConfig
    # the causal core (q, k, v, log_g, chunk=...) -> o; a benchmark may swap it on an instance
    scan = staticmethod(chunked_decay_attention)

    def __init__(self, config: RetNetConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, dv = config.dim, config.expand_v * config.dim
        self.q_proj = nn.Linear(D, D, bias=False, **kw)
        self.k_proj = nn.Linear(D, D, bias=False, **kw)
        self.v_proj = nn.Linear(D, dv, bias=False, **kw)
        self.g_proj = nn.Linear(D, dv, bias=False, **kw)
        self.group_norm = nn.GroupNorm(config.heads, dv, eps=config.norm_eps, **kw)
        self.out_proj = nn.Linear(dv, D, bias=False, **kw)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero,
        padded tokens pass the retention state through unchanged.
        causal: True runs causal retention (position i sees j <= i); False (default) sums a forward
        and a backward scan (weight gamma^|i-j|).
        Extra inputs: none. Precision: retention and the GroupNorm run in at least fp32.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        B, T, _ = x.shape
        dt = compute_dtype(x.dtype)  # sums over T run in >= fp32
        q = split_heads(self.q_proj(x), c.heads).to(dt) * c.head_dim**-0.5  # (B, H, T, K)
        k = split_heads(self.k_proj(x), c.heads).to(dt)  # (B, H, T, K)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, T, V)
        log_g = retention_log_decay(c.heads, x.device, dt)[None, :, None].expand(B, c.heads, T)  # (B, H, T)
        k, v, log_g = mask_scan_inputs(mask, k, v, log_g)
        if causal:
            o = self.scan(q, k, v, log_g, chunk=c.chunk_size)  # (B, H, T, V)
        else:
            o = bidirectional_scan(self.scan, q, k, v, log_g, chunk=c.chunk_size)  # (B, H, T, V)
        o = merge_heads(o)  # (B, T, H*V)
        gn = self.group_norm
        o = F.group_norm(o.reshape(B * T, -1), c.heads, gn.weight.to(dt), gn.bias.to(dt), gn.eps)  # (B*T, H*V)
        o = o.reshape(B, T, -1).to(x.dtype)  # (B, T, H*V)
        y = self.out_proj(F.silu(self.g_proj(x)) * o)  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the K x V retention state per head (fixed decay gamma_h per step) -----------

    def _state_tensors(self, batch, device, dtype):
        c = self.config
        V = c.expand_v * c.dim // c.heads
        return {"S": torch.zeros(batch, c.heads, c.head_dim, V, device=device, dtype=compute_dtype(dtype))}  # (B, H, K, V)

    def _advance(self, x, mask, state):
        c, S = self.config, state.tensors["S"]
        B, n, _ = x.shape
        dt = S.dtype
        q = split_heads(self.q_proj(x), c.heads).to(dt) * c.head_dim**-0.5  # (B, H, n, K)
        k = split_heads(self.k_proj(x), c.heads).to(dt)  # (B, H, n, K)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, n, V)
        log_g = retention_log_decay(c.heads, x.device, dt)[None, :, None].expand(B, c.heads, n)  # (B, H, n)
        k, v, log_g = mask_scan_inputs(mask, k, v, log_g)
        o, state.tensors["S"] = decayed_attention_step(q, k, v, log_g, S)  # (B, H, n, V)
        gn = self.group_norm
        o = F.group_norm(merge_heads(o).reshape(B * n, -1), c.heads, gn.weight.to(dt), gn.bias.to(dt), gn.eps)
        o = o.reshape(B, n, -1).to(x.dtype)  # (B, n, H*V)
        return self.out_proj(F.silu(self.g_proj(x)) * o)  # (B, n, D)

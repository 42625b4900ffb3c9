"""GLA: gated linear attention, a linear-attention state with a data-dependent per-channel decay.

Paper
    Yang, Wang, Shen, Panda, Kim, "Gated Linear Attention Transformers with Hardware-Efficient
    Training", ICML 2024, arXiv 2312.06635. Code: fla-org/flash-linear-attention
    (``fla/layers/gla.py``; pure-PyTorch oracle ``fla/ops/gla/naive.py``).

Mechanism
    Per head, ``q = x W_Q / sqrt(K)``, ``k = x W_K`` (key width ``expand_k`` x D over the heads),
    ``v = x W_V``, and a decay per key channel from a low-rank map,
    ``log g_t = logsigmoid(x W_1 W_2 + b) / gate_logit_normalizer`` (<= 0). The state
    ``S_t = diag(g_t) S_{t-1} + k_t^T v_t`` (K x V) is read by ``o_t = q_t S_t``. Fast path: chunked
    (``chunk_size``) with GLA's secondary chunking inside a chunk (``sub_chunk`` tokens): between
    sub-chunks both q and k are rescaled against the boundary where the query's sub-chunk starts
    (every factor <= 1) and multiplied as matrices; inside a sub-chunk the exact s x s x K decays are
    formed in log space; across chunks the state is passed by a scan (``zoo.scan``). Each head's
    output goes through an RMSNorm (weight shared by the heads), is gated by ``swish(x W_G)`` and
    projected by W_O.

Deviations
    Bidirectional (default, not in the paper): a forward and a backward scan with the same
    parameters, summed, the token itself counted once (for s > t the weight of s uses the decays
    of tokens t .. s-1). Padding: padded tokens have k = v = 0 and decay 1 (the state passes
    through them unchanged). No feature map and no ``clamp_min`` on the gate (fla's defaults).
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
    ceil_div,
    check_inputs,
    check_positive_int,
    check_range,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import compute_dtype, linear_flops, merge_heads, split_heads
from zoo.registry import register
from zoo.state import StateSize, decayed_attention_step
from zoo.scan import bidirectional_scan, chunked_channel_decay_attention, mask_scan_inputs


@dataclass(frozen=True)
class GLAConfig(MixerConfig):
    expand_k: float = cfg(0.5, "key width = expand_k x dim (over all heads), fla's default")
    gate_low_rank: int = cfg(16, "rank of the decay projection W_1 W_2")
    gate_logit_normalizer: float = cfg(16.0, "log g = logsigmoid(.) / this (fla's default 16)")
    chunk_size: int = cfg(64, "tokens per chunk (state passed between chunks)")
    sub_chunk: int = cfg(16, "tokens per sub-chunk inside a chunk (exact log-space decays); divides chunk_size")
    norm_eps: float = cfg(1e-5, "eps of the per-head output RMSNorm")

    def validate(self) -> None:
        check_range("expand_k", self.expand_k, 1e-6, 64.0)
        key_dim = self.dim * self.expand_k
        if key_dim != int(key_dim) or int(key_dim) % self.heads or key_dim < self.heads:
            raise ZooValueError(
                f"gla: expand_k: expected dim x expand_k to be a positive multiple of heads={self.heads}, "
                f"got dim={self.dim}, expand_k={self.expand_k} (key width {key_dim})"
            )
        check_positive_int("gate_low_rank", self.gate_low_rank)
        check_range("gate_logit_normalizer", self.gate_logit_normalizer, 1e-6, 1e6)
        check_positive_int("chunk_size", self.chunk_size)
        check_positive_int("sub_chunk", self.sub_chunk)
        if self.chunk_size % self.sub_chunk:
            raise ZooValueError(
                f"gla: sub_chunk: expected a divisor of chunk_size={self.chunk_size}, got {self.sub_chunk}"
            )
        check_range("norm_eps", self.norm_eps, 1e-12, 1.0)

    @property
    def key_dim(self) -> int:
        return int(self.dim * self.expand_k)

    @classmethod
    def tiny(cls) -> "GLAConfig":
        return cls(dim=16, heads=2, gate_low_rank=4, chunk_size=8, sub_chunk=4)


def gla_flops(c: GLAConfig, B: int, T: int, causal: bool = False) -> float:
    D, Kd, H = c.dim, c.key_dim, c.heads
    K, V = Kd // H, D // H
    proj = linear_flops(B, T, D, Kd, count=2) + linear_flops(B, T, D, D, count=3)
    proj += linear_flops(B, T, D, c.gate_low_rank) + linear_flops(B, T, c.gate_low_rank, Kd)
    Tp = ceil_div(T, c.chunk_size) * c.chunk_size
    # intra-chunk scores (sub-chunk pairs + in-sub-chunk log-space tensor) and scores @ v,
    # chunk states and queries against the passed state
    one = 2.0 * B * H * Tp * (c.chunk_size * (K + V) + c.sub_chunk * K + 2 * K * V)
    return proj + (one if causal else 2.0 * one)


@register
class GLAMixer(TokenMixer):
    spec = MixerSpec(
        name="gla",
        title="Gated Linear Attention Transformers with Hardware-Efficient Training",
        arxiv="2312.06635",
        year=2024,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=gla_flops,
        cost_note=(
            "O(T·(c·(K + V) + s·K + K·V)·h) mixing, c = chunk_size, s = sub_chunk, K/V = key/value "
            "head widths; memory O(B·h·T·(c + s·K) + B·h·(T/c)·K·V)"
        ),
        causal=True,
        key_padding_mask=True,
        deviations=(
            "bidirectional = forward + backward scan with shared weights; padded tokens: k = v = 0, "
            "decay 1; no feature map or gate clamp (fla defaults)"
        ),
        state=StateSize.CONSTANT,  # the K x V state per head
    )
    Config = GLAConfig
    # the causal core (q, k, v, log_g, chunk=..., sub_chunk=...) -> o; a benchmark may swap it
    scan = staticmethod(chunked_channel_decay_attention)

    def __init__(self, config: GLAConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, Kd = config.dim, config.key_dim
        self.q_proj = nn.Linear(D, Kd, bias=False, **kw)
        self.k_proj = nn.Linear(D, Kd, bias=False, **kw)
        self.v_proj = nn.Linear(D, D, bias=False, **kw)
        self.g_proj = nn.Linear(D, D, bias=False, **kw)
        self.gk_down = nn.Linear(D, config.gate_low_rank, bias=False, **kw)
        self.gk_up = nn.Linear(config.gate_low_rank, Kd, bias=True, **kw)
        self.norm_weight = nn.Parameter(torch.empty(D // config.heads, **kw))  # (V,), shared by heads
        self.out_proj = nn.Linear(D, D, bias=False, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.ones_(self.norm_weight)  # the projections keep nn.Linear's default init

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """log g (B, T, key width) <= 0 from the low-rank gate projection."""
        return F.logsigmoid(self.gk_up(self.gk_down(x))) / self.config.gate_logit_normalizer

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero,
        padded tokens pass the state through unchanged.
        causal: True runs the causal gated scan (position i sees j <= i); False (default) sums a
        forward and a backward scan.
        Extra inputs: none. Precision: the scan and the output RMSNorm run in at least fp32.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        dt = compute_dtype(x.dtype)  # sums over T run in >= fp32
        K = c.key_dim // c.heads
        q = split_heads(self.q_proj(x), c.heads).to(dt) * K**-0.5  # (B, H, T, K)
        k = split_heads(self.k_proj(x), c.heads).to(dt)  # (B, H, T, K)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, T, V)
        log_g = split_heads(self.log_decay(x), c.heads).to(dt)  # (B, H, T, K)
        k, v, log_g = mask_scan_inputs(mask, k, v, log_g)
        kw = {"chunk": c.chunk_size, "sub_chunk": c.sub_chunk}
        if causal:
            o = self.scan(q, k, v, log_g, **kw)  # (B, H, T, V)
        else:
            o = bidirectional_scan(self.scan, q, k, v, log_g, **kw)  # (B, H, T, V)
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + c.norm_eps) * self.norm_weight.to(dt)  # (B, H, T, V)
        o = merge_heads(o).to(x.dtype)  # (B, T, D)
        y = self.out_proj(F.silu(self.g_proj(x)) * o)  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the K x V state per head, decayed per key channel --------------------------

    def _state_tensors(self, batch, device, dtype):
        c = self.config
        K, V = c.key_dim // c.heads, c.dim // c.heads
        return {"S": torch.zeros(batch, c.heads, K, V, device=device, dtype=compute_dtype(dtype))}  # (B, H, K, V)

    def _advance(self, x, mask, state):
        c, S = self.config, state.tensors["S"]
        dt = S.dtype
        q = split_heads(self.q_proj(x), c.heads).to(dt) * S.shape[-2] ** -0.5  # (B, H, n, K)
        k = split_heads(self.k_proj(x), c.heads).to(dt)  # (B, H, n, K)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, n, V)
        log_g = split_heads(self.log_decay(x), c.heads).to(dt)  # (B, H, n, K)
        k, v, log_g = mask_scan_inputs(mask, k, v, log_g)
        o, state.tensors["S"] = decayed_attention_step(q, k, v, log_g, S, piece=c.sub_chunk)  # (B, H, n, V)
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + c.norm_eps) * self.norm_weight.to(dt)
        o = merge_heads(o).to(x.dtype)  # (B, n, D)
        return self.out_proj(F.silu(self.g_proj(x)) * o)  # (B, n, D)

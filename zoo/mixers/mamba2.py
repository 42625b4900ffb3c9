"""Mamba-2: the SSD layer, a selective state space with a scalar input-dependent decay per head.

Paper
    Dao, Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
    Structured State Space Duality", ICML 2024, arXiv 2405.21060. Code: state-spaces/mamba
    (``mamba_ssm/modules/mamba2_simple.py``; the paper's minimal listing ``ssd_minimal.py``).

Mechanism
    One input projection gives z (gate), x (``expand`` x D channels, h heads of width P), B and C
    (``d_state`` channels each, one group shared by the heads) and dt (one per head). x, B, C pass
    through a short causal depthwise conv (``d_conv`` taps) and SiLU; ``dt = softplus(dt + dt_bias)``
    and ``A = -exp(A_log)`` (one per head). The SSD recurrence per head is
    ``S_t = exp(dt_t A) S_{t-1} + B_t^T (dt_t x_t)``, ``y_t = C_t S_t + D x_t``, i.e. decayed linear
    attention with q = C, k = B, v = dt x and log decay dt A, computed chunked (``chunk_size``;
    intra-chunk quadratic, inter-chunk state passing, ``zoo.scan``). Then the gated RMSNorm
    ``rmsnorm(y * silu(z)) * w`` and the output projection W_O.

Deviations
    Bidirectional (default; Mamba-2 is causal): a forward and a backward SSD scan with the same
    parameters, summed, the token itself counted once, plus D x (Hydra, arXiv 2407.09941, sums
    two scans with shared projections too, but shifts them and uses a non-causal conv; here the
    short conv stays causal in both modes). Padding: x, B, C are zeroed at padded tokens before the
    conv (junk never reaches a real token), and in the scan padded tokens have k = v = 0 and decay
    1 (the state passes through them unchanged); a real token right after a pad reads zeros
    through the conv. No initial state, one group (ngroups = 1), no dt limit.
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
    check_inputs,
    check_positive_int,
    check_range,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import compute_dtype, linear_flops
from zoo.registry import register
from zoo.state import StateSize, conv_with_tail, decayed_attention_step
from zoo.scan import bidirectional_scan, chunked_decay_attention, decay_scan_flops, mask_scan_inputs


@dataclass(frozen=True)
class Mamba2Config(MixerConfig):
    d_state: int = cfg(64, "SSM state width N (channels of B and C)")
    d_conv: int = cfg(4, "taps of the short causal depthwise conv on x, B, C")
    expand: int = cfg(2, "inner width = expand x dim, split into the heads")
    chunk_size: int = cfg(64, "tokens per chunk of the SSD scan")
    dt_min: float = cfg(0.001, "smallest initial step dt (log-uniform init)")
    dt_max: float = cfg(0.1, "largest initial step dt (log-uniform init)")
    norm_eps: float = cfg(1e-5, "eps of the gated RMSNorm")

    def validate(self) -> None:
        for name in ("d_state", "d_conv", "expand", "chunk_size"):
            check_positive_int(name, getattr(self, name))
        check_range("dt_min", self.dt_min, 1e-8, 1.0)
        check_range("dt_max", self.dt_max, 1e-8, 1.0)
        if self.dt_min > self.dt_max:
            raise ZooValueError(f"mamba2: dt_max: expected >= dt_min={self.dt_min}, got {self.dt_max}")
        check_range("norm_eps", self.norm_eps, 1e-12, 1.0)

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @classmethod
    def tiny(cls) -> "Mamba2Config":
        return cls(dim=16, heads=2, d_state=8, chunk_size=4)


def mamba2_flops(c: Mamba2Config, B: int, T: int, causal: bool = False) -> float:
    di, N, H = c.d_inner, c.d_state, c.heads
    proj = linear_flops(B, T, c.dim, 2 * di + 2 * N + H) + linear_flops(B, T, di, c.dim)
    conv = 2.0 * B * T * (di + 2 * N) * c.d_conv
    return proj + conv + decay_scan_flops(B, T, H, N, di // H, c.chunk_size, causal, qk_heads=1)


def causal_depthwise_conv(u: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """(B, T, C) -> (B, T, C): depthwise conv with left zero-padding, output t reads u[t-w+1 .. t]."""
    T = u.shape[1]
    return conv(u.transpose(1, 2))[..., :T].transpose(1, 2)  # (B, C, T + w - 1) -> (B, T, C)


@register
class Mamba2Mixer(TokenMixer):
    spec = MixerSpec(
        name="mamba2",
        title="Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space Duality",
        arxiv="2405.21060",
        year=2024,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=mamba2_flops,
        cost_note=(
            "O(T·(c·(N + P) + N·P)·h) scan + O(T·D·(2e·D + 2N)) projections, c = chunk_size, "
            "N = d_state, P = head width, e = expand; memory O(B·h·T·c + B·h·(T/c)·N·P)"
        ),
        causal=True,
        key_padding_mask=True,
        deviations=(
            "bidirectional = forward + backward SSD scan with shared parameters (Hydra-like, causal "
            "conv kept); padded tokens: x, B, C zeroed before the conv, k = v = 0 and decay 1 in the "
            "scan; one group, no initial state"
        ),
        state=StateSize.CONSTANT,  # the N x P SSM state per head and the short conv's last d_conv - 1 inputs
    )
    Config = Mamba2Config
    # the causal core (q, k, v, log_g, chunk=...) -> o; a benchmark may swap it on an instance
    scan = staticmethod(chunked_decay_attention)

    def __init__(self, config: Mamba2Config, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        c = config
        di, N, H = c.d_inner, c.d_state, c.heads
        self.in_proj = nn.Linear(c.dim, 2 * di + 2 * N + H, bias=False, **kw)
        conv_dim = di + 2 * N
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, c.d_conv, groups=conv_dim, padding=c.d_conv - 1, **kw)
        self.dt_bias = nn.Parameter(torch.empty(H, **kw))  # softplus^-1 of the initial step dt, (H,)
        self.A_log = nn.Parameter(torch.empty(H, **kw))  # log(-A), (H,)
        self.D = nn.Parameter(torch.empty(H, **kw))  # skip D x, (H,)
        self.norm_weight = nn.Parameter(torch.empty(di, **kw))  # gated RMSNorm gain, (di,)
        self.out_proj = nn.Linear(di, c.dim, bias=False, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # mamba_ssm's Mamba2Simple: dt ~ log-uniform in [dt_min, dt_max], stored as softplus^-1(dt);
        # A ~ uniform in [1, 16]; D and the norm gain ones. Drawn in fp32, then cast.
        c = self.config
        H, device = c.heads, self.A_log.device
        lo, hi = math.log(c.dt_min), math.log(c.dt_max)
        dt = torch.exp(torch.rand(H, device=device) * (hi - lo) + lo)  # (H,)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log.copy_(torch.empty(H, device=device).uniform_(1, 16).log())
        nn.init.ones_(self.D)
        nn.init.ones_(self.norm_weight)

    def ssd_inputs(self, x: torch.Tensor, mask: torch.Tensor | None):
        """(z, xs, q, k, v, log_g) in the compute dtype: z, xs (B, T, di); q = C, k = B
        (B, 1, T, N), shared by the heads; v = dt x (B, H, T, P); log_g = dt A (B, H, T). Padding not yet applied to the scan."""
        c = self.config
        di, N, H = c.d_inner, c.d_state, c.heads
        z, xbc, dt_raw = self.in_proj(x).split([di, di + 2 * N, H], dim=-1)
        if mask is not None:
            xbc = xbc * mask[..., None].to(xbc.dtype)  # padded inputs never reach the conv
        xbc = F.silu(causal_depthwise_conv(xbc, self.conv1d))  # (B, T, di + 2N)
        cd = compute_dtype(x.dtype)
        xs, Bm, Cm = xbc.to(cd).split([di, N, N], dim=-1)
        Bsz, T, _ = x.shape
        dt = F.softplus(dt_raw.to(cd) + self.dt_bias.to(cd)).transpose(1, 2)  # (B, H, T)
        log_g = dt * -torch.exp(self.A_log.to(cd))[None, :, None]  # (B, H, T)
        v = xs.reshape(Bsz, T, H, di // H).transpose(1, 2) * dt[..., None]  # (B, H, T, P)
        k = Bm[:, None]  # (B, 1, T, N): one group shared by the heads
        q = Cm[:, None]  # (B, 1, T, N)
        return z, xs, q, k, v, log_g

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero,
        padded tokens pass the scan state through unchanged.
        causal: True runs the causal SSD scan (position i sees j <= i); False (default) sums a
        forward and a backward scan.
        Extra inputs: none. Precision: the scan, skip, gate and RMSNorm run in at least fp32.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        B, T, _ = x.shape
        z, xs, q, k, v, log_g = self.ssd_inputs(x, mask)
        k, v, log_g = mask_scan_inputs(mask, k, v, log_g)
        if causal:
            y = self.scan(q, k, v, log_g, chunk=c.chunk_size)  # (B, H, T, P)
        else:
            y = bidirectional_scan(self.scan, q, k, v, log_g, chunk=c.chunk_size)  # (B, H, T, P)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, di)
        skip = (xs.reshape(B, T, c.heads, -1) * self.D.to(xs.dtype)[:, None]).reshape(B, T, -1)  # (B, T, di)
        y = (y + skip) * F.silu(z.to(y.dtype))  # (B, T, di)
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + c.norm_eps) * self.norm_weight.to(y.dtype)
        return zero_padded(self.out_proj(y.to(x.dtype)), mask)

    # -- generation: the SSD state (N x P per head) and the short conv's last d_conv - 1 inputs ----

    def _state_tensors(self, batch, device, dtype):
        c = self.config
        di, N, H = c.d_inner, c.d_state, c.heads
        return {
            "S": torch.zeros(batch, H, N, di // H, device=device, dtype=compute_dtype(dtype)),  # (B, H, N, P)
            "conv": torch.zeros(batch, c.d_conv - 1, di + 2 * N, device=device, dtype=dtype),  # (B, w - 1, di + 2N)
        }

    def _advance(self, x, mask, state):
        c, t = self.config, state.tensors
        di, N, H = c.d_inner, c.d_state, c.heads
        B, n, _ = x.shape
        z, xbc, dt_raw = self.in_proj(x).split([di, di + 2 * N, H], dim=-1)
        if mask is not None:
            xbc = xbc * mask[..., None].to(xbc.dtype)  # padded inputs never reach the conv
        xbc, t["conv"] = conv_with_tail(t["conv"], xbc, lambda u: causal_depthwise_conv(u, self.conv1d))
        cd = t["S"].dtype
        xs, Bm, Cm = F.silu(xbc).to(cd).split([di, N, N], dim=-1)  # (B, n, di), (B, n, N) x 2
        dt = F.softplus(dt_raw.to(cd) + self.dt_bias.to(cd)).transpose(1, 2)  # (B, H, n)
        log_g = dt * -torch.exp(self.A_log.to(cd))[None, :, None]  # (B, H, n)
        v = xs.reshape(B, n, H, di // H).transpose(1, 2) * dt[..., None]  # (B, H, n, P)
        k, v, log_g = mask_scan_inputs(mask, Bm[:, None], v, log_g)  # k (B, 1, n, N)
        y, t["S"] = decayed_attention_step(Cm[:, None], k, v, log_g, t["S"])  # (B, H, n, P)
        y = y.transpose(1, 2).reshape(B, n, -1)  # (B, n, di)
        skip = (xs.reshape(B, n, H, -1) * self.D.to(xs.dtype)[:, None]).reshape(B, n, -1)  # (B, n, di)
        y = (y + skip) * F.silu(z.to(y.dtype))  # (B, n, di)
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + c.norm_eps) * self.norm_weight.to(y.dtype)
        return self.out_proj(y.to(x.dtype))  # (B, n, D)

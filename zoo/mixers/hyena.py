"""Hyena: gated long convolutions with implicitly parameterised filters, by FFT.

Paper
    Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Ré, "Hyena Hierarchy: Towards
    Larger Convolutional Language Models", ICML 2023, arXiv 2302.10866. Code: HazyResearch/safari
    (``src/models/sequence/hyena.py``).

Mechanism
    One projection gives N + 1 streams (v, x^1 .. x^N, each D wide, N = ``order``), each passed
    through a depthwise causal short convolution (``short_conv_size`` taps, with bias). Then the
    order-N recurrence ``z^1 = v``, ``z^{n+1} = x^n * (h^n conv z^n + b^n * z^n)`` (``*``
    elementwise, ``b^n`` a learned per-channel skip), and ``y = W_O z^{N+1}``. The long filters
    are implicit: ``h^n_t = window_c(t) * FFN(pe(t))``, pe(t) = [t / L, cos and sin of
    2 pi f t / L for f = 1 .. ``pos_bands``] (L = ``filter_len_scale``), FFN = Linear, sin(w .),
    Linear, sin(w .), Linear (``filter_width`` wide, learned frequencies w), window_c(t) =
    exp(-alpha_c t / L) with fixed rates alpha_c spread over [log(100)/1.5, log(100)/0.3]
    across channels. Each long convolution is one FFT product of size 2T (zero padding, so it is
    linear, not circular); the filters depend on the lag only, not on T.

Deviations
    * Bidirectional (the default): a two-sided filter. A second output layer of the same FFN
      gives the taps at negative lags (same window in |t|), placed at the end of the FFT buffer;
      ``causal=True`` uses the forward taps only. The short convolutions stay causal.
    * Order N = 2 follows the paper's recurrence (N long filters); safari's ``order=2`` uses one
      long filter and applies the first gate before it.
    * Padding: padded positions of every stream are zeroed before the short convolutions and
      before each long convolution, so they contribute nothing to real outputs.
    * One head (safari's default); ``heads`` is accepted for the common config and unused.
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
    log2,
    zero_padded,
)
from zoo.functional import compute_dtype, linear_flops
from zoo.registry import register
from zoo.state import StateSize, conv_with_tail, grown_capacity


@dataclass(frozen=True)
class HyenaConfig(MixerConfig):
    order: int = cfg(2, "Hyena order N: N gates and N long convolutions (N + 1 projected streams)")
    filter_width: int = cfg(64, "hidden width of the implicit filter FFN")
    pos_bands: int = cfg(4, "sin/cos frequency bands of the filter's positional features")
    filter_len_scale: int = cfg(16384, "lag scale L of the filter (features and window use t / L; not a limit)")
    short_conv_size: int = cfg(3, "taps of the depthwise causal short convolution on the projections")

    def validate(self) -> None:
        check_positive_int("order", self.order)
        check_positive_int("filter_width", self.filter_width)
        check_positive_int("pos_bands", self.pos_bands, minimum=0)
        check_positive_int("filter_len_scale", self.filter_len_scale)
        check_positive_int("short_conv_size", self.short_conv_size)

    @classmethod
    def tiny(cls) -> "HyenaConfig":
        return cls(dim=16, heads=2, filter_width=8, pos_bands=2, filter_len_scale=32)


def hyena_flops(c: HyenaConfig, B: int, T: int, causal: bool = False) -> float:
    """Projections, short convs, N FFT convolutions (2.5 n log2 n per real FFT, n = 2T; input
    transform and inverse per channel), spectrum product, gates. The filter FFN and its FFT run
    once per call, independent of B, and are not counted (see cost_note)."""
    D, N = c.dim, c.order
    n = 2 * T
    proj = linear_flops(B, T, D, (N + 1) * D) + linear_flops(B, T, D, D)
    conv = 2.0 * B * T * (N + 1) * D * c.short_conv_size
    fft = 2 * 2.5 * n * log2(n) + 6.0 * (n // 2 + 1) + 3.0 * T  # per channel, per order
    return proj + conv + B * N * D * fft


def causal_depthwise_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y[:, c, t] = bias[c] + sum_j weight[c, j] u[:, c, t - taps + 1 + j] over a (B, C, T) sequence
    (zeros before the first token); weight (C, taps). Shifted sums along the last axis, where the
    long convolutions' FFTs run: no transposes, and torch's FLOP counter sees elementwise work (it
    counts a grouped conv1d's backward as dense)."""
    T, taps = u.shape[-1], weight.shape[-1]
    up = F.pad(u, (taps - 1, 0))  # (B, C, T + taps - 1)
    y = up[..., taps - 1 :] * weight[:, taps - 1, None] + bias[:, None]  # (B, C, T)
    for j in range(taps - 1):
        y = y + up[..., j : j + T] * weight[:, j, None]
    return y


def channels_first_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x).transpose(1, 2)`` for x (B, T, D), computed as W @ x^T (B, out, T) so that it
    comes out contiguous along T. Measured at T = 4k, D = 256, 3D outputs, one CPU thread: the
    transposing copy of the (B, T, 3D) projection took 21 ms, the projection itself 11."""
    w = layer.weight.expand(x.shape[0], -1, -1)  # (B, out, D): a view
    if layer.bias is None:
        return torch.bmm(w, x.transpose(1, 2))  # (B, out, T)
    return torch.baddbmm(layer.bias[None, :, None], w, x.transpose(1, 2))  # (B, out, T)


def fft_long_conv(z: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor | None) -> torch.Tensor:
    """y_t = sum_s h_{t-s} z_s by one FFT product of size 2T (zero-padded: linear, not circular).

    z (B, C, T); forward (C, T) taps at lags 0 .. T-1; backward (C, T) taps at lags 0 .. -(T-1)
    (its lag 0 is ignored) or None for a causal filter. Returns (B, C, T) in z's dtype.
    """
    T = z.shape[-1]
    n = 2 * T
    if backward is None:
        kernel = forward  # (C, T), zero-padded to n by rfft
    else:
        # buffer index n - l holds lag -l, l = 1 .. T-1; index T is an unused zero
        kernel = torch.cat([forward, forward.new_zeros(forward.shape[0], 1), backward[:, 1:].flip(-1)], -1)  # (C, 2T)
    spectrum = torch.fft.rfft(z, n=n) * torch.fft.rfft(kernel, n=n)  # (B, C, T + 1) complex
    return torch.fft.irfft(spectrum, n=n)[..., :T]  # (B, C, T)


class Sin(nn.Module):
    """sin(w * x) with a learned frequency per feature (the implicit filter's activation)."""

    def __init__(self, width: int, device=None, dtype=None):
        super().__init__()
        self.freq = nn.Parameter(torch.empty(width, device=device, dtype=dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.ones_(self.freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


@register
class HyenaMixer(TokenMixer):
    spec = MixerSpec(
        name="hyena",
        title="Hyena Hierarchy: Towards Larger Convolutional Language Models",
        arxiv="2302.10866",
        year=2023,
        time=Complexity.LOGLINEAR,
        memory=Complexity.LINEAR,
        flops=hyena_flops,
        cost_note=(
            "O(N·B·D·T log T) for N = order FFT convolutions of size 2T, plus O(B·T·D^2) projections; "
            "the implicit filter FFN, O(T·w·(w + 2·N·D)) with w = filter_width, runs once per call "
            "(independent of B, not in the FLOP formula); memory O(B·N·T·D)"
        ),
        causal=True,
        key_padding_mask=True,
        deviations=(
            "bidirectional = two-sided implicit filter (second FFN output layer for negative lags); "
            "order N = the paper's N long filters (safari's order=2 has one); padded positions zeroed "
            "before every convolution; one head"
        ),
        state=StateSize.LINEAR,  # every past input of each long convolution (the filter spans the whole history)
    )
    Config = HyenaConfig

    def __init__(self, config: HyenaConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, N, W = config.dim, config.order, config.filter_width
        self.in_proj = nn.Linear(D, (N + 1) * D, **kw)
        self.short_conv_weight = nn.Parameter(torch.empty((N + 1) * D, config.short_conv_size, **kw))  # ((N+1)·D, taps)
        self.short_conv_bias = nn.Parameter(torch.empty((N + 1) * D, **kw))  # ((N+1)·D,)
        features = 1 + 2 * config.pos_bands
        self.filter_ffn = nn.Sequential(
            nn.Linear(features, W, **kw), Sin(W, **kw), nn.Linear(W, W, **kw), Sin(W, **kw)
        )
        self.filter_forward = nn.Linear(W, N * D, bias=False, **kw)  # taps at lags >= 0
        self.filter_backward = nn.Linear(W, N * D, bias=False, **kw)  # taps at lags <= 0
        self.skip = nn.Parameter(torch.empty(N, D, **kw))  # per-channel skip b^n of each order
        # fixed decay rates of the window, one per filter channel (not trained)
        self.register_buffer("window_rates", torch.empty(N * D, **kw), persistent=False)  # (N·D,)
        self.out_proj = nn.Linear(D, D, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # the short conv as PyTorch's depthwise Conv1d default (fan_in = taps); skip ~ N(0, 1);
        # window rates spread over [log(100)/1.5, log(100)/0.3]
        nn.init.kaiming_uniform_(self.short_conv_weight, a=math.sqrt(5))
        bound = self.config.short_conv_size**-0.5
        nn.init.uniform_(self.short_conv_bias, -bound, bound)
        nn.init.normal_(self.skip)
        lo, hi = math.log(100) / 1.5, math.log(100) / 0.3
        rates = torch.linspace(lo, hi, self.window_rates.numel(), dtype=torch.float64)  # (N·D,)
        self.window_rates.copy_(rates)

    def positional_features(self, T: int, dtype: torch.dtype, device) -> torch.Tensor:
        """pe(t) for lags t = 0 .. T-1: (T, 1 + 2·pos_bands)."""
        c = self.config
        t = torch.arange(T, device=device, dtype=torch.float64) / c.filter_len_scale  # (T,)
        bands = torch.arange(1, c.pos_bands + 1, device=device, dtype=torch.float64)  # (F,)
        angle = 2 * math.pi * t[:, None] * bands[None, :]  # (T, F)
        return torch.cat([t[:, None], angle.cos(), angle.sin()], dim=-1).to(dtype)  # (T, 1 + 2F)

    def filters(self, T: int, dtype: torch.dtype, two_sided: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(forward, backward) implicit filters, each (N, D, T) in ``dtype``: taps at lags 0 .. T-1
        and 0 .. -(T-1); backward is None unless ``two_sided``."""
        c = self.config
        weight = self.filter_forward.weight
        hidden = self.filter_ffn(self.positional_features(T, weight.dtype, weight.device))  # (T, W)
        t = torch.arange(T, device=weight.device, dtype=dtype) / c.filter_len_scale  # (T,)
        window = torch.exp(-self.window_rates.to(dtype)[:, None] * t[None, :])  # (N·D, T)
        out = []
        for head in (self.filter_forward, self.filter_backward) if two_sided else (self.filter_forward,):
            # (N·D, W) @ (W, T): taps contiguous along the lags, as the FFTs and the gates read them
            taps = torch.matmul(head.weight, hidden.transpose(0, 1)).to(dtype) * window  # (N·D, T)
            out.append(taps.reshape(c.order, c.dim, T))  # (N, D, T)
        return out[0], (out[1] if two_sided else None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero,
        padded positions are zeroed before every convolution.
        causal: True uses the causal filter taps only (position i sees j <= i); False (default) the
        two-sided filter.
        Extra inputs: none. Precision: the filters, FFTs and gates run in at least fp32.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        B, T, D = x.shape
        dt = compute_dtype(x.dtype)  # FFTs and sums in >= fp32
        keep = None if mask is None else mask[:, None, :].to(dt)  # (B, 1, T)
        # channels first throughout, (B, C, T): the FFTs run along T, and elementwise work on a
        # transposed view (stride (N+1)·D along T) ran ~3x slower per element at T = 4k
        u = channels_first_linear(x, self.in_proj)  # (B, (N+1)·D, T)
        if mask is not None:
            u = u.masked_fill(~mask[:, None, :], 0.0)  # padded positions feed no neighbour
        u = causal_depthwise_conv(u, self.short_conv_weight, self.short_conv_bias).to(dt)  # (B, (N+1)·D, T)
        v, *gates = u.split(D, dim=1)  # (B, D, T) each
        forward, backward = self.filters(T, dt, two_sided=not causal)  # (N, D, T) each, or None
        z = v
        for n in range(c.order):
            if keep is not None:
                z = z * keep  # padded positions contribute nothing to the convolution
            conv = fft_long_conv(z, forward[n], None if backward is None else backward[n])  # (B, D, T)
            z = gates[n] * (conv + self.skip[n].to(dt)[:, None] * z)  # (B, D, T)
        y = self.out_proj(z.transpose(1, 2).to(x.dtype))  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the long convolutions read the whole history, so the state keeps every past
    # input of each order (O(T)) and the causal filter taps computed so far (they depend on the lag
    # only); a step costs O(T·D) per order (a direct sum), a prefill chunk one FFT over the history --

    def _state_tensors(self, batch, device, dtype):
        c = self.config
        cd, D, N = compute_dtype(dtype), c.dim, c.order
        return {
            "conv": torch.zeros(batch, c.short_conv_size - 1, (N + 1) * D, device=device, dtype=dtype),  # short conv tail
            "z": torch.zeros(batch, N, D, 0, device=device, dtype=cd),  # (B, N, D, cap): inputs of each long conv
            "taps": torch.zeros(N, D, 0, device=device, dtype=cd),  # (N, D, cap): causal filter taps by lag
        }

    def _advance(self, x, mask, state):
        c, t = self.config, state.tensors
        B, n, D = x.shape
        L, cd = state.position, t["z"].dtype
        if t["taps"].shape[-1] < L + n:  # the filters depend on the lag only: extend them
            t["taps"] = self.filters(grown_capacity(t["taps"].shape[-1], L + n), cd, two_sided=False)[0]
        u = self.in_proj(x)  # (B, n, (N+1)·D)
        if mask is not None:
            u = u.masked_fill(~mask.unsqueeze(-1), 0.0)
        def conv(s):  # (B, L, C) -> (B, L, C): the chunk is short, its transposes cheap
            return causal_depthwise_conv(s.transpose(1, 2), self.short_conv_weight, self.short_conv_bias).transpose(1, 2)

        u, t["conv"] = conv_with_tail(t["conv"], u, conv)  # (B, n, (N+1)·D)
        v, *gates = u.to(cd).transpose(1, 2).split(D, dim=1)  # (B, D, n) each
        keep = None if mask is None else mask[:, None, :].to(cd)  # (B, 1, n)
        z, history = v, t["z"]
        for i in range(c.order):
            if keep is not None:
                z = z * keep
            history = self._append_order(history, i, z, L)
            seen = history[:, i, :, : L + n]  # (B, D, L + n): this order's inputs so far
            taps = t["taps"][i, :, : L + n]  # (D, L + n)
            if n == 1:  # one new token: out_t = sum_s h[t - s] z[s], a direct sum over the history
                long = (seen * taps.flip(-1)).sum(-1, keepdim=True)  # (B, D, 1)
            else:
                long = fft_long_conv(seen, taps, None)[..., L:]  # (B, D, n)
            z = gates[i] * (long + self.skip[i].to(cd)[:, None] * z)  # (B, D, n)
        t["z"] = history
        return self.out_proj(z.transpose(1, 2).to(x.dtype))  # (B, n, D)

    @staticmethod
    def _append_order(history, i, z, L):
        """Write order i's new inputs z (B, D, n) after position L of history (B, N, D, cap)."""
        n = z.shape[-1]
        if history.shape[-1] < L + n:
            grown = history.new_zeros(*history.shape[:3], grown_capacity(history.shape[-1], L + n))
            grown[..., :L] = history[..., :L]
            history = grown
        history[:, i, :, L : L + n] = z
        return history

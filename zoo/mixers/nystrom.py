"""Nyströmformer: softmax attention through M landmarks and an iterative pseudo-inverse.

Paper
    Xiong et al., "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention",
    AAAI 2021, arXiv 2102.03902.

Mechanism
    Per head, with q~ = q p^(-1/4) and k~ = k p^(-1/4), the real tokens of each sequence are split
    into M = ``num_landmarks`` contiguous runs of near-equal length and averaged into landmarks
    Qt, Kt (M x p). With F = softmax(q~ Kt^T) (T x M), A = softmax(Qt Kt^T) (M x M) and
    Bk = softmax(Qt k~^T) over real keys (M x T), the output is F · Z · (Bk · V), where Z
    approximates pinv(A) by ``pinv_iterations`` steps of Z <- Z (13 I - AZ (15 I - AZ (7 I - AZ))) / 4
    from Z0 = A^T / (max column sum of A, per batch element and head). A depthwise convolution of
    width ``conv_kernel`` along the sequence (one kernel per head, shared by its p channels, no
    bias) of the masked V is added (``conv_kernel=0`` disables it). Cost O(T·M·p + M^3) per head.

    Precision: for bf16/fp16 inputs the core (three softmaxes, the iterative pseudo-inverse)
    runs in fp32; under autocast its matmuls follow autocast's dtype.

Deviations
    Landmarks are means over real tokens only, in runs of floor/ceil(N/M) real tokens (N = real
    tokens of that sequence), instead of means over fixed position blocks of n/M that include
    padding (the reference reshapes a fixed-length, padded sequence). Consequences: any T works
    without internal padding, and appended padding changes nothing (C3 holds). When N < M some runs
    are empty; those landmarks are dropped (their F column is masked, their A row/column is the
    identity, which the pseudo-inverse iteration leaves decoupled). A sequence with N <= M has each
    real token as its own landmark, where Nyström's formula with an exact pseudo-inverse is exact
    softmax attention; the zoo returns that exact limit (F · Vt) for such sequences instead of the
    6-iteration approximation (the reference special-cases only M = T). Z0 uses a per-(batch, head)
    max column sum, not the reference's max over the whole batch (which couples sequences).
    ``attention_dropout`` (default 0, training only): the authors' code applies no dropout inside
    Nyström attention (LRA and BERT ``attention_nystrom.py``; the T2T-ViT module builds an
    ``attn_drop`` it never calls). The zoo drops the entries of F (T x M), the query-to-landmark
    weights: per query they play the role of the attention weights, and for sequences with
    N <= M (every token its own landmark) F is exactly the softmax attention matrix, so the
    exact limit gets plain attention dropout. A (whose pseudo-inverse a random mask would make
    meaningless) and Bk are never dropped.
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
    attention_dropout_field,
    attention_dropout_p,
    cfg,
    check_inputs,
    check_positive_int,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import (
    key_padding_bias,
    linear_flops,
    merge_heads,
    neg_value,
    safe_key_mask,
    sdpa_attention,
    split_heads,
)
from zoo.registry import register


@dataclass(frozen=True)
class NystromConfig(MixerConfig):
    num_landmarks: int = cfg(64, "M, number of landmarks (segment means of queries and keys)")
    pinv_iterations: int = cfg(6, "iterations of the Newton-Schulz-type pseudo-inverse of A (M x M)")
    conv_kernel: int = cfg(35, "width of the depthwise conv skip on V along the sequence (odd; 0 = off)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("num_landmarks", self.num_landmarks)
        check_positive_int("pinv_iterations", self.pinv_iterations)
        check_positive_int("conv_kernel", self.conv_kernel, minimum=0)
        if self.conv_kernel % 2 == 0 and self.conv_kernel != 0:
            raise ZooValueError(
                f"conv_kernel: expected 0 (off) or an odd width (centred, same length), got {self.conv_kernel}"
            )

    @classmethod
    def tiny(cls) -> "NystromConfig":
        # 4 landmarks: T ~ 7..40 has 2..10 tokens per landmark and sometimes N <= M.
        return cls(dim=16, heads=2, num_landmarks=4, conv_kernel=5)


def nystrom_flops(c: NystromConfig, B: int, T: int, causal: bool = False) -> float:
    H, P, M = c.heads, c.head_dim, c.num_landmarks
    if T <= M:  # exact attention
        core = 4.0 * B * H * T * T * P
    else:
        core = 2.0 * B * H * T * P * 2  # landmark means of q~ and k~
        core += 2.0 * B * H * T * M * P * 3  # F = q~ Kt^T, Bk = Qt k~^T, Bk V
        core += 2.0 * B * H * M**3 * (1 + 4 * c.pinv_iterations)  # A, pinv iterations
        core += 2.0 * B * H * (M * M * P + T * M * P)  # Z (Bk V), F (...)
    conv = 2.0 * B * H * T * P * c.conv_kernel
    return linear_flops(B, T, c.dim, c.dim, count=4) + core + conv


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Approximate pinv of a (..., M, M) by the Nyströmformer iteration from Z0 = a^T / max col sum.

    The normaliser is per matrix (per batch element and head), so batch elements never couple.
    """
    M = a.shape[-1]
    eye = torch.eye(M, dtype=a.dtype, device=a.device)  # (M, M)
    z = a.transpose(-1, -2) / a.sum(dim=-2).amax(dim=-1)[..., None, None]  # (..., M, M)
    for _ in range(iterations):
        az = torch.matmul(a, z)  # (..., M, M)
        z = 0.25 * torch.matmul(z, 13 * eye - torch.matmul(az, 15 * eye - torch.matmul(az, 7 * eye - az)))
    return z


def landmark_weights(keys: torch.Tensor, num_landmarks: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaging weights (B, T, M) of real tokens into M contiguous runs, and the empty-run flags (B, M).

    Real token of rank r (0-based among the N real tokens of its sequence) joins run floor(r M / N).
    """
    M = num_landmarks
    rank = keys.long().cumsum(-1) - 1  # (B, T)
    n_real = keys.long().sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
    run = torch.where(keys, rank * M // n_real, torch.full_like(rank, M))  # (B, T); pads -> run M
    # a comparison, not F.one_hot (which reads the largest id on the host: a device sync)
    onehot = (run[..., None] == torch.arange(M, device=run.device)).to(dtype)  # (B, T, M)
    counts = onehot.sum(dim=1, keepdim=True)  # (B, 1, M)
    return onehot / counts.clamp_min(1.0), counts.squeeze(1) == 0


def nystrom_kernels(
    q: torch.Tensor, k: torch.Tensor, keys: torch.Tensor, num_landmarks: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """F (B, H, T, M), A (B, H, M, M), Bk (B, H, M, T) and the landmark averaging matrix (B', 1, M, T).

    q, k (B, H, T, P) already scaled by p^(-1/4); keys bool (B', T), True = real (B' = B or 1).
    Empty landmarks get a masked F column and an identity row in A.
    """
    M = num_landmarks
    weights, empty = landmark_weights(keys, M, q.dtype)  # (B', T, M), (B', M)
    avg = weights.transpose(-1, -2).unsqueeze(1)  # (B', 1, M, T)
    qt = torch.matmul(avg, q)  # (B, H, M, P)
    kt = torch.matmul(avg, k)  # (B, H, M, P)
    land_bias = torch.zeros(empty.shape, dtype=q.dtype, device=q.device).masked_fill(empty, neg_value(q.dtype))
    land_bias = land_bias[:, None, None, :]  # (B', 1, 1, M)
    f = torch.softmax(torch.matmul(q, kt.transpose(-1, -2)) + land_bias, dim=-1)  # (B, H, T, M)
    a = torch.softmax(torch.matmul(qt, kt.transpose(-1, -2)) + land_bias, dim=-1)  # (B, H, M, M)
    eye = torch.eye(M, dtype=q.dtype, device=q.device)  # (M, M)
    a = torch.where(empty[:, None, :, None], eye, a)  # empty landmarks: decoupled identity rows
    bk_logits = torch.matmul(qt, k.transpose(-1, -2)) + key_padding_bias(keys, q.dtype)  # (B, H, M, T)
    bk = torch.softmax(bk_logits, dim=-1)  # (B, H, M, T)
    return f, a, bk, avg


def nystrom_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_landmarks: int,
    mask: torch.Tensor | None = None,
    pinv_iterations: int = 6,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Nyström attention without the conv skip. q, k, v (B, H, T, P); mask bool (B, T) -> (B, H, T, P).

    ``dropout_p``: dropout on F, the query-to-landmark weights (the caller passes 0 outside training).
    """
    B, H, T, P = q.shape
    M = num_landmarks
    q = q * P**-0.25
    k = k * P**-0.25
    if T <= M:  # every token is its own landmark: the exact limit
        return sdpa_attention(q, k, v, mask, scale=1.0, dropout_p=dropout_p)  # F = the attention weights
    if mask is None and T % M == 0:  # every run is one position block of T/M tokens
        qt = q.reshape(B, H, M, T // M, P).mean(dim=-2)  # (B, H, M, P)
        kt = k.reshape(B, H, M, T // M, P).mean(dim=-2)  # (B, H, M, P)
        f = torch.softmax(torch.matmul(q, kt.transpose(-1, -2)), dim=-1)  # (B, H, T, M)
        a = torch.softmax(torch.matmul(qt, kt.transpose(-1, -2)), dim=-1)  # (B, H, M, M)
        bk = torch.softmax(torch.matmul(qt, k.transpose(-1, -2)), dim=-1)  # (B, H, M, T)
        if dropout_p:
            f = F.dropout(f, dropout_p)  # (B, H, T, M)
        z = iterative_pinv(a, pinv_iterations)  # (B, H, M, M)
        return torch.matmul(f, torch.matmul(z, torch.matmul(bk, v)))  # (B, H, T, P)

    keys = torch.ones(1, T, dtype=torch.bool, device=q.device) if mask is None else safe_key_mask(mask)
    f, a, bk, avg = nystrom_kernels(q, k, keys, M)
    if dropout_p:
        f = F.dropout(f, dropout_p)  # (B, H, T, M); the exact limit below uses the same mask
    z = iterative_pinv(a, pinv_iterations)  # (B, H, M, M)
    out = torch.matmul(f, torch.matmul(z, torch.matmul(bk, v)))  # (B, H, T, P)
    if mask is None:
        return out
    # Sequences with N <= M real tokens: each real token is its own landmark, exact attention F·Vt.
    short = keys.sum(-1) <= M  # (B,)
    exact = torch.matmul(f, torch.matmul(avg, v))  # (B, H, T, P)
    return torch.where(short[:, None, None, None], exact, out)


def depthwise_sequence_conv(v: torch.Tensor, weight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Convolve v (B, H, T, P) along T with one centred kernel per head, weight (H, W), zero padding.

    Computed as a banded matrix product over blocks of ``block`` outputs (each reads ``block + W - 1``
    inputs): a few times the multiply-adds of a direct convolution, but BLAS-shaped, which is
    2-3x faster on CPU than torch's grouped (W x 1) conv2d for W ~ 35.
    """
    B, H, T, P = v.shape
    W = weight.shape[-1]
    half = W // 2
    N = -(-T // block)
    vp = F.pad(v, (0, 0, half, N * block - T + half))  # (B, H, N*S + W - 1, P)
    windows = vp.unfold(2, block + 2 * half, block)  # (B, H, N, P, S + W - 1), a view
    tap = torch.arange(block + 2 * half, device=v.device)[None, :] - torch.arange(block, device=v.device)[:, None]
    valid = (tap >= 0) & (tap < W)  # (S, S + W - 1): output i reads input i + tap - half
    band = weight[:, tap.clamp(0, W - 1)] * valid.to(weight.dtype)  # (H, S, S + W - 1)
    out = torch.einsum("hij,bhnpj->bhnip", band, windows)  # (B, H, N, S, P)
    return out.reshape(B, H, N * block, P)[:, :, :T]  # (B, H, T, P)


@register
class NystromMixer(TokenMixer):
    spec = MixerSpec(
        name="nystrom",
        title="Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention",
        arxiv="2102.03902",
        year=2021,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=nystrom_flops,
        cost_note="O(T·M·D + H·M^3) time, O(B·H·T·M) memory, M = num_landmarks; conv skip O(T·W·D)",
        causal=False,
        key_padding_mask=True,
        approximates_softmax=True,
        fidelity_overrides=(("conv_kernel", 0),),  # the conv skip is not part of the approximation
        deviations=(
            "landmarks = means over runs of real tokens (C3 holds, no internal padding); sequences with "
            "N <= M real tokens get the exact limit; Z0 normalised per (batch, head), not over the batch; "
            "attention dropout (off by default, none in the reference) on F only"
        ),
    )
    Config = NystromConfig

    def __init__(self, config: NystromConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        if config.conv_kernel:
            self.conv_weight = nn.Parameter(torch.empty(config.heads, config.conv_kernel, **kw))  # (H, W)
        else:
            self.register_parameter("conv_weight", None)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        if self.conv_weight is not None:
            bound = 1.0 / math.sqrt(self.config.conv_kernel)  # nn.Conv2d's default init for this shape
            nn.init.uniform_(self.conv_weight, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        H = c.heads
        # Softmax normalisers and the pseudo-inverse iteration are fragile in half precision.
        ct = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        q = split_heads(self.q_proj(x), H).to(ct)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H).to(ct)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H).to(ct)  # (B, H, T, P)
        p = attention_dropout_p(self)
        o = nystrom_attention(q, k, v, c.num_landmarks, mask, c.pinv_iterations, p)  # (B, H, T, P)
        if self.conv_weight is not None:
            if mask is not None:
                v = v * safe_key_mask(mask)[:, None, :, None].to(ct)  # padded values never leak in
            o = o + depthwise_sequence_conv(v, self.conv_weight.to(ct))  # (B, H, T, P)
        y = self.out_proj(merge_heads(o.to(x.dtype)))  # (B, T, D)
        return zero_padded(y, mask)

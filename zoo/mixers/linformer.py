"""Linformer: softmax attention over keys and values compressed along the sequence axis.

Paper
    Wang et al., "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768, 2020.

Mechanism
    A learned matrix E (heads x k x ``max_len``, init N(0, 0.02)) compresses the sequence axis:
    per head, Kc = E[:, :T] (m ⊙ K) and Vc = E[:, :T] (m ⊙ V) are k x p (padded rows zeroed first),
    and out = softmax(Q Kc^T / sqrt(p)) Vc, in O(T·k·p) time. By default one E serves keys and
    values (``share_kv=True``, as in the LRA code); otherwise values get their own matrix
    ``proj_v``. Inputs longer than ``max_len`` are rejected.

    Precision: the softmax over the k compressed keys runs in fp32 for bf16/fp16 scores
    (autocast included).

Deviations
    none in the math (the PoNet LRA copy also shares E across layers; here each layer owns its E).
    Padded K/V rows are zeroed before the projection, so appended padding contributes nothing to
    Kc and Vc and the real outputs equal those of the unpadded input (C3 holds for right padding,
    which is what ``spec.key_padding_mask=True`` promises). E's columns are absolute positions, so
    padding placed *before* real tokens shifts them and does change the result. The projection
    mixes all positions: no causal variant.
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
from zoo.errors import ZooTypeError, ZooValueError
from zoo.functional import linear_flops, merge_heads, split_heads
from zoo.registry import register


@dataclass(frozen=True)
class LinformerConfig(MixerConfig):
    proj_len: int = cfg(256, "k, the compressed sequence length of keys and values")
    max_len: int = cfg(16384, "longest accepted T (columns of the projection E)")
    share_kv: bool = cfg(True, "one projection E for keys and values (LRA code); False adds proj_v")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("proj_len", self.proj_len)
        check_positive_int("max_len", self.max_len)
        if self.proj_len > self.max_len:
            raise ZooValueError(
                f"proj_len: expected at most max_len={self.max_len} (a compression), got {self.proj_len}"
            )
        if not isinstance(self.share_kv, bool):
            raise ZooTypeError(f"share_kv: expected a bool, got {self.share_kv!r}")

    @classmethod
    def tiny(cls) -> "LinformerConfig":
        return cls(dim=16, heads=2, proj_len=4, max_len=64)


def linformer_flops(c: LinformerConfig, B: int, T: int, causal: bool = False) -> float:
    H, P, K = c.heads, c.head_dim, c.proj_len
    core = 2 * 2.0 * B * H * K * T * P  # compress K and V
    core += 2 * 2.0 * B * H * T * K * P  # Q Kc^T and P Vc
    return linear_flops(B, T, c.dim, c.dim, count=4) + core


@register
class LinformerMixer(TokenMixer):
    spec = MixerSpec(
        name="linformer",
        title="Linformer: Self-Attention with Linear Complexity",
        arxiv="2006.04768",
        year=2020,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=linformer_flops,
        cost_note="O(T·k·D) time, O(B·H·T·k) memory, k = proj_len; H·k·max_len parameters in E",
        causal=False,
        key_padding_mask=True,
        approximates_softmax=True,
        deviations="none in the math; E is per layer (the PoNet LRA code shares it across layers)",
    )
    Config = LinformerConfig

    def __init__(self, config: LinformerConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        shape = (config.heads, config.proj_len, config.max_len)  # (H, k, max_len)
        self.proj_k = nn.Parameter(torch.empty(shape, **kw))
        if config.share_kv:
            self.register_parameter("proj_v", None)
        else:
            self.proj_v = nn.Parameter(torch.empty(shape, **kw))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.proj_k, std=0.02)
        if self.proj_v is not None:
            nn.init.normal_(self.proj_v, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        T = x.shape[1]
        if T > c.max_len:
            raise ZooValueError(
                f"linformer: x: expected T <= max_len={c.max_len} (columns of the projection E), got T={T}; "
                "build the mixer with a larger max_len"
            )
        H = c.heads
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)
        if mask is not None:
            keep = mask[:, None, :, None].to(k.dtype)  # (B, 1, T, 1)
            k, v = k * keep, v * keep
        e_k = self.proj_k[:, :, :T].unsqueeze(0)  # (1, H, k, T)
        e_v = e_k if self.proj_v is None else self.proj_v[:, :, :T].unsqueeze(0)  # (1, H, k, T)
        kc = torch.matmul(e_k, k)  # (B, H, k, P)
        vc = torch.matmul(e_v, v)  # (B, H, k, P)
        scores = torch.matmul(q, kc.transpose(-1, -2)) / math.sqrt(c.head_dim)  # (B, H, T, k)
        ct = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
        probs = torch.softmax(scores, dim=-1, dtype=ct).to(v.dtype)  # (B, H, T, k), fp32 for half inputs
        p = attention_dropout_p(self)
        if p:
            probs = F.dropout(probs, p)  # (B, H, T, k): training only
        o = torch.matmul(probs, vc)  # (B, H, T, P)
        y = self.out_proj(merge_heads(o))  # (B, T, D)
        return zero_padded(y, mask)

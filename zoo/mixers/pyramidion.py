"""Pyramidion: blockwise attention followed by trainable top-k representation pooling.

Paper
    Pietruszka, Borchmann, Garncarek, "Sparsifying Transformer Models with Trainable
    Representation Pooling", ACL 2022, arXiv 2009.05169; the pooling operator from Pietruszka,
    Borchmann, Graliński, "Successive Halving Top-k Operator", AAAI 2021, arXiv 2010.15552
    (reference code: applicaai/pyramidions).

Mechanism
    Blockwise softmax attention (as ``pyramidion_block``: non-overlapping blocks of
    ``block_size``, padded keys masked) gives y (B, T, D). A linear scorer Lin(D->1) rates every
    token, s = sigmoid(logit) + 1e-5 (fp32). The successive-halving top-k
    (:func:`zoo.functional.successive_halving_topk`) then reduces T to k = out_len(T) =
    ceil(T * keep_ratio) tokens: in each of R rounds the tokens are ranked by score, the best
    half is paired with the worst half (flip-right) and each pair merges into
    softmax(base^s_a, base^s_c)-weighted averages of vectors and scores. ``forward_with_mask``
    returns (pooled (B, k, D), pooled keep-mask (B, k)); ``forward`` returns the pooled vectors.

Deviations
    * Any T and keep_ratio: the paper needs T / k = 2^R; the zoo pads the scored sequence with
      masked tokens to k * 2^R, R = ceil(log2(T / k)), before halving (spec 5.6 suggested
      T // pool_ratio with a power-of-two ratio; the issue asks for ceil(T * keep_ratio)).
    * Padding: padded tokens rank after every real token (stable sort, ties broken by index)
      and lose their pair with weight exactly 0, so they never contribute while a real token is
      left; the pooled mask is the keep-mask pushed through the same weights (real iff mass >
      1/2), giving min(N_b, k) real outputs; other rows are exactly zero. The reference pads with
      zero vectors of score 1e-5 that take part in the soft merge, and applies no attention mask.
    * The mixer pools its own attention output (scorer on y, no FFN or residual inside a mixer);
      the reference pools after the whole encoder layer (attention + FFN + residuals).
    * ``hard=True`` selects the k highest-scoring tokens exactly (beta -> infinity limit, no
      gradient to the scorer), meant for inference; the reference's ``hard_topk_inference`` flag
      is unused. With keep_ratio = 1 (R = 0) tokens come back unchanged in text order.
    * Block attention as in ``pyramidion_block`` (masked keys per block, T padded to a multiple
      of the block, c = min(T, block_size)); PyTorch default Linear init.
    * Low precision: scores and merge weights are computed in fp32, but the scorer reads the
      bf16/fp16 attention output, so near-tied scores rank differently than in fp32 and the
      top-k pairing flips. Under bf16 (autocast or a bf16 module) the output differs from fp32
      by 14-18% relative error at the default config (30-50% at ``Config.tiny()``): a different
      selection, not round-off. ``spec.precision_sensitive`` marks it, and the contract tests hold
      its bf16 output only to being finite and of the fp32 output's scale.
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
from zoo.functional import (
    block_attention,
    halving_rounds,
    merge_heads,
    pad_to_multiple,
    split_heads,
    successive_halving_topk,
)
from zoo.mixers.pyramidion_block import block_attention_flops, effective_block
from zoo.registry import register

SCORE_EPS = 1e-5  # the reference's floor on sigmoid scores


def pooled_length(T: int, keep_ratio: float) -> int:
    """ceil(T * keep_ratio), at least 1, robust to float noise (0.1 * 30 -> 3, not 4)."""
    return max(1, math.ceil(T * keep_ratio - 1e-9))


@dataclass(frozen=True)
class PyramidionConfig(MixerConfig):
    block_size: int = cfg(512, "tokens per attention block c (the reference's chunk_size)")
    keep_ratio: float = cfg(0.25, "output length out_len(T) = ceil(T * keep_ratio), in (0, 1]")
    base: float = cfg(20.0, "top-k base beta: pair weights softmax(beta^s_a, beta^s_c); > 1")
    flip: bool = cfg(True, "pair the best half with the worst half reversed (best meets worst)")
    sort_back: bool = cfg(False, "after each round order the winners by position, not by score rank")
    hard: bool = cfg(False, "exact top-k selection (inference; no gradient reaches the scorer)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("block_size", self.block_size)
        kr = self.keep_ratio
        if isinstance(kr, bool) or not isinstance(kr, (int, float)) or not (0 < kr <= 1):
            raise ZooValueError(f"keep_ratio: expected a number in (0, 1], got {kr!r}")
        if isinstance(self.base, bool) or not isinstance(self.base, (int, float)) or not self.base > 1:
            raise ZooValueError(f"base: expected a number > 1, got {self.base!r}")
        for name in ("flip", "sort_back", "hard"):
            if not isinstance(getattr(self, name), bool):
                raise ZooTypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    @classmethod
    def tiny(cls) -> "PyramidionConfig":
        return cls(dim=16, heads=2, block_size=8, keep_ratio=0.25)


def pyramidion_flops(c: PyramidionConfig, B: int, T: int, causal: bool = False) -> float:
    """Block attention + scorer Lin(D->1) + the merges (3 FLOPs per channel per merged pair)."""
    k = pooled_length(T, c.keep_ratio)
    padded = k << halving_rounds(T, k)
    merges = 0.0 if c.hard else 3.0 * B * (padded - k) * c.dim  # sum of L_r / 2 over rounds = L' - k
    return block_attention_flops(c, B, T) + 2.0 * B * T * c.dim + merges


@register
class PyramidionMixer(TokenMixer):
    spec = MixerSpec(
        name="pyramidion",
        title="Sparsifying Transformer Models with Trainable Representation Pooling",
        arxiv="2009.05169",
        year=2022,
        time=Complexity.LOGLINEAR,
        memory=Complexity.LINEAR,
        flops=pyramidion_flops,
        cost_note=(
            "O(T·c·D) block attention + O(T·D) scorer + successive halving: O(T·D) merges and "
            "R = ceil(log2(1/keep_ratio)) sorts of O(T log T); output ceil(T·keep_ratio) tokens"
        ),
        causal=False,
        key_padding_mask=True,
        reduces_length=True,
        deviations=(
            "any T: scored sequence padded with masked tokens to k*2^R; padded tokens lose their "
            "pair with weight 0 and rank last (stable sort); pools the attention output (no FFN/"
            "residual); hard=True exact top-k; masked keys inside blocks; default Linear init; "
            "under bf16 the top-k selection flips (14-18% relative error vs fp32 at the default config)"
        ),
        precision_sensitive=True,
    )
    Config = PyramidionConfig

    def __init__(self, config: PyramidionConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        self.scorer = nn.Linear(D, 1, **kw)

    def out_len(self, T: int) -> int:
        return pooled_length(T, self.config.keep_ratio)

    def forward_with_mask(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, out_len(T), D), pooled keep-mask (B, out_len(T)) bool)."""
        check_inputs(self, x, mask, causal)
        c = self.config
        B, T, _ = x.shape
        blk = effective_block(c.block_size, T)
        xp, mp = pad_to_multiple(x, mask, blk)  # (B, T', D), (B, T') or None
        q = split_heads(self.q_proj(xp), c.heads)  # (B, H, T', P)
        k = split_heads(self.k_proj(xp), c.heads)  # (B, H, T', P)
        v = split_heads(self.v_proj(xp), c.heads)  # (B, H, T', P)
        o = block_attention(q, k, v, blk, mp, dropout_p=attention_dropout_p(self))  # (B, H, T', P)
        y = zero_padded(self.out_proj(merge_heads(o)[:, :T]), mask)  # (B, T, D)
        # scores in fp32 at least (fp64 stays fp64): the ranking must not hinge on bf16 rounding
        ct = torch.promote_types(y.dtype, torch.float32)
        w, b = self.scorer.weight.to(ct), self.scorer.bias.to(ct)
        logits = F.linear(y.to(ct), w, b).squeeze(-1)  # (B, T)
        scores = torch.sigmoid(logits) + SCORE_EPS  # (B, T)
        pooled, _, out_mask = successive_halving_topk(
            y, scores, self.out_len(T), mask, base=c.base, flip=c.flip, sort_back=c.sort_back, hard=c.hard
        )  # (B, K, D), (B, K)
        return zero_padded(pooled, out_mask), out_mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, out_len(T), D) pooled tokens (``forward_with_mask`` also returns their keep-mask).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        y, _ = self.forward_with_mask(x, mask, causal=causal)
        return y

"""Pyramidion's blockwise attention: softmax attention inside non-overlapping blocks (length-preserving).

Paper
    Pietruszka, Borchmann, Garncarek, "Sparsifying Transformer Models with Trainable
    Representation Pooling", ACL 2022, arXiv 2009.05169 (reference code: applicaai/pyramidions).

Mechanism
    The sequence is cut into non-overlapping blocks of ``block_size`` tokens (one block of T
    tokens when T < block_size) and each block runs standard multi-head softmax attention with
    its own keys only, as an independent batch element (fused SDPA). Q, K, V and W_O are
    Lin(D->D) shared by all blocks. Padded keys are excluded inside every block; T is padded to
    a multiple of the block with masked tokens and sliced back. ``causal=True`` masks keys
    j > i inside each block. This is the attention of a Pyramidion encoder layer without the
    pooling (registry entry ``pyramidion`` adds the top-k pooling).

    Precision: block attention runs in fused SDPA in the input (or autocast's) dtype, softmax
    accumulated in fp32 inside the kernel.

Deviations
    The reference applies no padding mask in its pooling mode and drops the last T mod c tokens
    (``unfold``); the zoo masks padded keys inside every block and pads T to a multiple of the
    block instead. A fully padded block attends uniformly and is then zeroed (C2/C4). Causal mode
    is a zoo addition (the paper's encoder is bidirectional). Parameters use PyTorch's default
    Linear init (fairseq uses Xavier-uniform with gain 1/sqrt(2) on Q/K/V).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    check_inputs,
    check_positive_int,
    keep_mask,
    zero_padded,
)
from zoo.functional import block_attention, linear_flops, merge_heads, pad_to_multiple, split_heads
from zoo.registry import register
from zoo.state import StateSize, block_segments, cached_attention


@dataclass(frozen=True)
class PyramidionBlockConfig(MixerConfig):
    block_size: int = cfg(512, "tokens per attention block c (the reference's chunk_size)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("block_size", self.block_size)

    @classmethod
    def tiny(cls) -> "PyramidionBlockConfig":
        return cls(dim=16, heads=2, block_size=8)


def effective_block(block_size: int, T: int) -> int:
    """The reference's c = min(T, chunk_size): a short sequence is one block, not padded to c."""
    return max(1, min(block_size, T))


def block_attention_flops(c: MixerConfig, B: int, T: int, causal: bool = False) -> float:
    """Q/K/V/O projections plus QK^T and PV inside blocks over the padded length."""
    blk = effective_block(c.block_size, T)
    Tp = -(-T // blk) * blk
    attn = 4.0 * B * Tp * blk * c.dim  # 2 * (2 B H Tp c P)
    return linear_flops(B, Tp, c.dim, c.dim, count=4) + (attn / 2 if causal else attn)


@register
class PyramidionBlockMixer(TokenMixer):
    spec = MixerSpec(
        name="pyramidion_block",
        title="Sparsifying Transformer Models with Trainable Representation Pooling",
        arxiv="2009.05169",
        year=2022,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=block_attention_flops,
        cost_note="O(T·c·D) time, O(B·H·T·c) scores per block batch (fused SDPA), c = block_size",
        causal=True,
        key_padding_mask=True,
        approximates_softmax=True,
        deviations=(
            "padded keys masked inside every block and T padded to a multiple of the block "
            "(reference: no mask in pooling mode, trailing T mod c tokens dropped); causal mode is a "
            "zoo addition; PyTorch default Linear init"
        ),
        state=StateSize.WINDOW,  # keys and values of the current block only (<= block_size)
    )
    Config = PyramidionBlockConfig

    def __init__(self, config: PyramidionBlockConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: True runs the causal variant (position i sees j <= i).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        B, T, _ = x.shape
        H = self.config.heads
        blk = effective_block(self.config.block_size, T)
        xp, mp = pad_to_multiple(x, mask, blk)  # (B, T', D), (B, T') or None
        q = split_heads(self.q_proj(xp), H)  # (B, H, T', P)
        k = split_heads(self.k_proj(xp), H)  # (B, H, T', P)
        v = split_heads(self.v_proj(xp), H)  # (B, H, T', P)
        o = block_attention(q, k, v, blk, mp, causal, dropout_p=attention_dropout_p(self))  # (B, H, T', P)
        y = self.out_proj(merge_heads(o)[:, :T])  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the current block's KV (blocks start at multiples of block_size; a prompt
    # shorter than a block is one block either way, so this matches the forward at every T) ------

    def _state_tensors(self, batch, device, dtype):
        H, P = self.config.heads, self.config.head_dim
        return {
            "k": torch.zeros(batch, H, 0, P, device=device, dtype=dtype),  # (B, H, r, P), r < block
            "v": torch.zeros(batch, H, 0, P, device=device, dtype=dtype),  # (B, H, r, P)
            "keys": torch.zeros(batch, 0, dtype=torch.bool, device=device),  # (B, r)
        }

    def _advance(self, x, mask, state):
        H, t = self.config.heads, state.tensors
        q = split_heads(self.q_proj(x), H)  # (B, H, n, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, n, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, n, P)
        keys = keep_mask(x, mask)  # (B, n)
        outs = []
        for s, e, r in block_segments(state.position, x.shape[1], self.config.block_size):
            if r == 0:  # a new block: the previous block's keys are never seen again
                t["k"], t["v"], t["keys"] = t["k"][:, :, :0], t["v"][:, :, :0], t["keys"][:, :0]
            t["k"] = torch.cat([t["k"], k[:, :, s:e]], dim=2)  # (B, H, r + e - s, P)
            t["v"] = torch.cat([t["v"], v[:, :, s:e]], dim=2)  # (B, H, r + e - s, P)
            t["keys"] = torch.cat([t["keys"], keys[:, s:e]], dim=1)  # (B, r + e - s)
            outs.append(cached_attention(q[:, :, s:e], t["k"], t["v"], t["keys"], r))  # (B, H, e - s, P)
        return self.out_proj(merge_heads(torch.cat(outs, dim=2)))  # (B, n, D)

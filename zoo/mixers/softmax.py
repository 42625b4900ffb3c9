"""Softmax attention: the exact baseline every efficient mixer is compared against.

Paper
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv 1706.03762.

Mechanism
    Per head, ``softmax(Q K^T / sqrt(p)) V`` with Q, K, V linear projections of x and an output
    projection W_O. Padded keys are excluded from the softmax; causal mode masks keys j > i.
    ``impl`` picks the kernel: ``sdpa`` (torch's fused kernels, O(T) extra memory on the flash
    and memory-efficient backends), ``eager`` (the T x T matrix materialised, softmax in fp32:
    the "Transformer" row of the efficient-attention papers' tables) or ``xformers``
    (``memory_efficient_attention``; CUDA with xformers installed: no bias or
    ``LowerTriangularMask`` without a mask, a ``BlockDiagonalMask`` over packed real keys with a
    key mask, so memory stays O(T) and any T works; causal with a mask uses an 8-aligned bias).
    ``attention_dropout`` drops attention weights in training (SDPA's ``dropout_p``, xformers'
    ``p``; 0 by default, never in eval).

    Precision: ``sdpa``/``xformers`` accumulate the softmax in fp32 inside the kernel; ``eager``
    computes it in fp32.

Deviations
    None in the math. Zoo conventions: padded output rows are zeroed (C2); a fully padded
    sequence attends uniformly (then zeroed) instead of producing NaN; with causal + padding,
    each query may always see itself so no row is empty.
"""

from __future__ import annotations

import dataclasses
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
    check_choice,
    check_inputs,
    keep_mask,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import (
    eager_attention,
    linear_flops,
    merge_heads,
    neg_value,
    safe_key_mask,
    sdpa_attention,
    split_heads,
)
from zoo.registry import register
from zoo.state import StateSize, append_time, cached_attention

IMPLS = ("sdpa", "eager", "xformers")


@dataclass(frozen=True)
class SoftmaxConfig(MixerConfig):
    impl: str = cfg("sdpa", "kernel: sdpa (fused) | eager (materialised T x T) | xformers (CUDA)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_choice("impl", self.impl, IMPLS)

    @classmethod
    def tiny(cls) -> "SoftmaxConfig":
        return cls(dim=16, heads=2)


def softmax_flops(c: SoftmaxConfig, B: int, T: int, causal: bool = False) -> float:
    attn = 4.0 * B * T * T * c.dim  # Q K^T and P V: 2 * (2 B H T^2 P)
    return linear_flops(B, T, c.dim, c.dim, count=4) + (attn / 2 if causal else attn)


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a broken build that fails at import
        return False
    return True


def packed_keys(mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Keys to keep for a padded batch, packed for xformers' ``BlockDiagonalMask``.

    mask (B, T) bool. Returns (index (N,) into the flattened (B*T) key rows, in order, and the
    per-sequence key counts [N_b]). A fully padded sequence keeps all T keys (it attends uniformly,
    then its rows are zeroed), so no block is empty. The counts are read on the host (one sync: the
    xformers mask needs Python ints).
    """
    keys = safe_key_mask(mask)  # (B, T)
    index = keys.reshape(-1).nonzero().squeeze(-1)  # (N,) rows of the (B*T, H, P) keys
    return index, keys.sum(dim=1).tolist()


def aligned_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias (B, 1, T, T) from a bool (B, 1, T, T), as a slice of a buffer whose rows are
    a multiple of 8 elements long (xformers rejects a bias whose row stride is not 8-aligned)."""
    B, _, T, _ = allowed.shape
    T8 = -(-T // 8) * 8
    buf = torch.zeros(B, 1, T, T8, dtype=dtype, device=allowed.device)  # (B, 1, T, T8)
    bias = buf[..., :T]  # (B, 1, T, T), row stride T8
    bias.masked_fill_(~allowed, neg_value(dtype))
    return bias


def _xformers_attention(q, k, v, mask, causal, dropout_p=0.0):
    """xformers ``memory_efficient_attention``; q, k, v (B, H, T, P) -> (B, H, T, P).

    No mask: no bias, or ``LowerTriangularMask`` when causal (O(T) memory, flash-capable). A key
    mask: the real keys of every sequence are packed into one row of blocks and a
    ``BlockDiagonalMask`` pairs each sequence's T queries with its keys (O(T) memory). Causal with
    a mask: an 8-aligned dense bias (O(T^2), broadcast over heads).
    """
    import xformers.ops as xops
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask, LowerTriangularMask

    B, H, T, P = q.shape
    # (B, H, T, P) -> (B, T, H, P): xformers' layout
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if mask is None:
        bias = LowerTriangularMask() if causal else None
        out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)  # (B, T, H, P)
    elif not causal:
        index, counts = packed_keys(mask)
        kp = k.reshape(B * T, H, P).index_select(0, index)[None]  # (1, N, H, P)
        vp = v.reshape(B * T, H, P).index_select(0, index)[None]  # (1, N, H, P)
        bias = BlockDiagonalMask.from_seqlens(q_seqlen=[T] * B, kv_seqlen=counts)
        out = xops.memory_efficient_attention(q.reshape(1, B * T, H, P), kp, vp, attn_bias=bias, p=dropout_p)  # (1, B*T, H, P)
        out = out.reshape(B, T, H, P)
    else:
        allowed = safe_key_mask(mask)[:, None, None, :] & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=q.device)  # (B, 1, T, T): self always seen
        bias = aligned_bias(allowed, q.dtype).expand(B, H, T, T)  # (B, H, T, T), no copy over heads
        out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)  # (B, T, H, P)
    return out.transpose(1, 2)  # (B, H, T, P)


@register
class SoftmaxMixer(TokenMixer):
    spec = MixerSpec(
        name="softmax",
        title="Attention Is All You Need",
        arxiv="1706.03762",
        year=2017,
        time=Complexity.QUADRATIC,
        memory=Complexity.LINEAR,  # impl=sdpa (flash / mem-efficient); eager is O(T^2)
        flops=softmax_flops,
        cost_note="O(T^2·D) time; memory O(B·H·T^2) with impl=eager, O(B·T·D) with sdpa/xformers",
        causal=True,
        key_padding_mask=True,
        deviations="none (padded rows zeroed; fully padded rows finite)",
        state=StateSize.LINEAR,  # KV cache: keys and values of every consumed token
    )
    Config = SoftmaxConfig

    @classmethod
    def spec_for(cls, config: SoftmaxConfig) -> MixerSpec:
        # eager materialises the (B, H, T, T) scores: O(T^2) memory, unlike the fused kernels
        if config.impl == "eager":
            return dataclasses.replace(cls.spec, memory=Complexity.QUADRATIC)
        return cls.spec

    def __init__(self, config: SoftmaxConfig, *, device=None, dtype=None):
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
        H = self.config.heads
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)
        impl = self.config.impl
        p = attention_dropout_p(self)
        if impl == "sdpa":
            o = sdpa_attention(q, k, v, mask, causal, dropout_p=p)
        elif impl == "eager":
            o = eager_attention(q, k, v, mask, causal, dropout_p=p)
        else:
            if x.device.type != "cuda" or not xformers_available():
                raise ZooValueError(
                    "softmax: impl: 'xformers' needs a CUDA tensor and the xformers package "
                    f"(got device {x.device.type}, xformers installed: {xformers_available()}); "
                    "use impl='sdpa' or impl='eager'"
                )
            o = _xformers_attention(q, k, v, mask, causal, p)
        y = self.out_proj(merge_heads(o))  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: a KV cache, attended with SDPA whatever ``impl`` the forward uses ---------

    def _state_tensors(self, batch, device, dtype):
        H, P = self.config.heads, self.config.head_dim
        kv = dict(device=device, dtype=dtype)
        # growable caches (capacity grows by 1/8); the first state.position entries are filled
        return {
            "k": torch.zeros(batch, H, 0, P, **kv),  # (B, H, cap, P)
            "v": torch.zeros(batch, H, 0, P, **kv),  # (B, H, cap, P)
            "keys": torch.zeros(batch, 0, dtype=torch.bool, device=device),  # (B, cap): real token
        }

    def _advance(self, x, mask, state):
        H, L, n = self.config.heads, state.position, x.shape[1]
        t = state.tensors
        q = split_heads(self.q_proj(x), H)  # (B, H, n, P)
        t["k"] = append_time(t["k"], split_heads(self.k_proj(x), H), L, axis=2)  # (B, H, cap, P)
        t["v"] = append_time(t["v"], split_heads(self.v_proj(x), H), L, axis=2)  # (B, H, cap, P)
        t["keys"] = append_time(t["keys"], keep_mask(x, mask), L, axis=1)  # (B, cap)
        k, v, keys = t["k"][:, :, : L + n], t["v"][:, :, : L + n], t["keys"][:, : L + n]
        o = cached_attention(q, k, v, keys, L)  # (B, H, n, P)
        return self.out_proj(merge_heads(o))  # (B, n, D)

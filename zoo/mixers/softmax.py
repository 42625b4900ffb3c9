"""Softmax attention: the exact baseline every efficient mixer is compared against.

Paper
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv 1706.03762.

Mechanism
    Per head, ``softmax(Q K^T / sqrt(p)) V`` with Q, K, V linear projections of x and an output
    projection W_O. Padded keys are excluded from the softmax; causal mode masks keys j > i.
    ``impl`` picks the kernel: ``sdpa`` (torch's fused kernels, O(T) extra memory on the flash
    and memory-efficient backends), ``eager`` (the T x T matrix materialised, softmax in fp32:
    the "Transformer" row of the efficient-attention papers' tables) or ``xformers``
    (``memory_efficient_attention``; CUDA with xformers installed).

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

from zoo.base import Complexity, MixerConfig, MixerSpec, TokenMixer, cfg, check_choice, check_inputs, keep_mask, zero_padded
from zoo.errors import ZooValueError
from zoo.functional import eager_attention, linear_flops, merge_heads, safe_key_mask, sdpa_attention, split_heads
from zoo.registry import register
from zoo.state import StateSize, append_time, cached_attention

IMPLS = ("sdpa", "eager", "xformers")


@dataclass(frozen=True)
class SoftmaxConfig(MixerConfig):
    impl: str = cfg("sdpa", "kernel: sdpa (fused) | eager (materialised T x T) | xformers (CUDA)")

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


def _xformers_attention(q, k, v, mask, causal):
    """xformers memory-efficient attention; q, k, v (B, H, T, P)."""
    import xformers.ops as xops

    B, H, T, _ = q.shape
    # (B, H, T, P) -> (B, T, H, P): xformers' layout
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    bias = None
    if mask is not None or causal:
        allowed = torch.ones(B, 1, T, T, dtype=torch.bool, device=q.device)
        if mask is not None:
            allowed = allowed & safe_key_mask(mask)[:, None, None, :]
        if causal:
            allowed = (allowed & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()) | torch.eye(
                T, dtype=torch.bool, device=q.device
            )
        bias = torch.zeros(B, H, T, T, dtype=q.dtype, device=q.device)  # (B, H, T, T)
        bias.masked_fill_(~allowed, float("-inf"))
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias)  # (B, T, H, P)
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
        check_inputs(self, x, mask, causal)
        H = self.config.heads
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)
        impl = self.config.impl
        if impl == "sdpa":
            o = sdpa_attention(q, k, v, mask, causal)
        elif impl == "eager":
            o = eager_attention(q, k, v, mask, causal)
        else:
            if x.device.type != "cuda" or not xformers_available():
                raise ZooValueError(
                    "softmax: impl: 'xformers' needs a CUDA tensor and the xformers package "
                    f"(got device {x.device.type}, xformers installed: {xformers_available()}); "
                    "use impl='sdpa' or impl='eager'"
                )
            o = _xformers_attention(q, k, v, mask, causal)
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

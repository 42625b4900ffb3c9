"""Poolingformer: two-level attention, a small sliding window then a large window of pooled keys.

Paper
    Zhang, Gong, Shen, Li, Lv, Duan, Chen, Zhou, "Poolingformer: Long Document Modeling with
    Pooling Attention", ICML 2021, arXiv 2105.04371 (no public implementation).

Mechanism
    Level 1 is sliding-window softmax attention: query i sees the real keys j with
    |i - j| <= local_window / 2, giving y = merge(LocalAttn(Q1, K1, V1)). Level 2 reads
    u = x + y: its keys and values u W_K2, u W_V2 are pooled once onto a fixed grid anchored at
    position 0 (slot s covers positions s*stride - off .. + kernel - 1, off = floor((kernel -
    stride)/2), real positions only; ``pool`` = mean | max | conv (depthwise filter) | ldconv
    (lightweight dynamic convolution: per-slot tap weights softmax(Lin(D -> H*kernel)) shared by
    the channels of each head)), and query i attends the non-empty slots whose centre c_s
    satisfies |c_s - i| <= pool_window / 2. The output is (y + merge(z)) W_O. Both levels are
    blocked: scores are O(T·(local_window + pool_window/stride)), never T x T.

    Precision: the window and pooled-window softmaxes and the tap weights run in at least fp32.

Deviations
    No reference code exists; every choice below is a zoo decision from MIXERS.md 4 [unverified]:
    * ``local_window`` (w1) is the full width: one-sided w1/2; ``pool_window`` (w2) likewise.
    * Level 2 reads u = x + y (residual between levels), not y alone; level 1 has no output
      projection of its own: both levels share W_O after the sum.
    * The pooled grid is global and fixed (anchored at 0), not re-pooled around each query.
    * Pooling uses real positions only; a slot with no real position is masked. There are
      ceil((T + off) / stride) slots (every slot that starts inside the sequence; = ceil(T /
      stride) for kernel = stride), which keeps padding invariance for overlapping kernels.
    * ``conv``: one depthwise filter (D x kernel, no bias) for keys and one for values, initialised
      to 1/kernel (an average); pads contribute 0.
    * ``ldconv``: the tap weights of slot s are predicted from the mean of u over the slot's real
      positions (the spec's "input at the centre c_s" is fractional for even kernels and may be
      padding); separate predictors for keys and values; H_c = heads; softmax over all kernel
      taps, pads contribute 0 (not renormalised).
    * ``pool_window = 0`` switches level 2 off (output = level 1 through W_O). Defaults w1 = 128,
      w2 = 512, kernel = stride = 4, pool = mean are zoo choices.
    * A query with no allowed slot gets a zero level-2 row; padded rows are zeroed (C2).
    * ``attention_dropout`` (default 0, training only) drops the softmax weights of both levels
      (level 1: SDPA's ``dropout_p`` on the window; level 2: the pooled-slot weights), as a
      standard Transformer drops its attention probabilities; the paper does not say where.
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
    check_choice,
    check_inputs,
    check_positive_int,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import (
    grid_offset,
    grid_pool,
    grid_slot_count,
    linear_flops,
    merge_heads,
    pooled_window_attention,
    sliding_window_attention,
    split_heads,
)
from zoo.registry import register

POOLS = ("mean", "max", "conv", "ldconv")


@dataclass(frozen=True)
class PoolingformerConfig(MixerConfig):
    local_window: int = cfg(128, "level-1 window w1, full width (one-sided w1/2); even")
    pool_window: int = cfg(512, "level-2 window w2 over pooled slots, full width (one-sided w2/2); 0 = off")
    pool_kernel: int = cfg(4, "pooling kernel kappa (positions per slot)")
    pool_stride: int = cfg(4, "pooling stride xi (positions between slot starts)")
    pool: str = cfg("mean", "pooling op: mean | max | conv (depthwise) | ldconv (lightweight dynamic conv)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("local_window", self.local_window, minimum=0)
        if self.local_window % 2:
            raise ZooValueError(f"local_window: expected an even full width (one-sided w1/2), got {self.local_window}")
        check_positive_int("pool_window", self.pool_window, minimum=0)
        check_positive_int("pool_kernel", self.pool_kernel)
        check_positive_int("pool_stride", self.pool_stride)
        check_choice("pool", self.pool, POOLS)

    @classmethod
    def tiny(cls) -> "PoolingformerConfig":
        return cls(dim=16, heads=2, local_window=4, pool_window=12, pool_kernel=3, pool_stride=2, pool="ldconv")


def level2_candidates(c: PoolingformerConfig) -> tuple[int, int]:
    """(query block, candidate slots S per block) used by pooled_window_attention's default."""
    stride, kernel, window = c.pool_stride, c.pool_kernel, c.pool_window
    block = stride * max(1, -(-window // (2 * stride)))
    shift = kernel - 1 - 2 * grid_offset(kernel, stride)
    first = -((window + shift) // (2 * stride))
    last = (2 * (block - 1) + window - shift) // (2 * stride)
    return block, last - first + 1


def poolingformer_flops(c: PoolingformerConfig, B: int, T: int, causal: bool = False) -> float:
    """Projections + the scores actually computed by the blocked kernels + pooling."""
    D, H = c.dim, c.heads
    flops = linear_flops(B, T, D, D, count=4)  # level-1 q/k/v + out
    # sliding_window_attention: query blocks of w = w1/2 score the 3w keys around them
    w = min(c.local_window // 2, T - 1)
    blk = max(1, min(max(w, 1), T))
    flops += 4.0 * B * (-(-T // blk) * blk) * (blk + 2 * w) * D  # QK^T and PV
    if c.pool_window > 0:
        K = grid_slot_count(T, c.pool_kernel, c.pool_stride)
        block, S = level2_candidates(c)
        flops += linear_flops(B, T, D, D, count=3)  # q2/k2/v2
        flops += 4.0 * B * (-(-T // block) * block) * S * D
        flops += 2 * 2.0 * B * K * c.pool_kernel * D  # pooling keys and values
        if c.pool == "ldconv":
            flops += 2.0 * B * K * c.pool_kernel * D  # slot means of u
            flops += 2 * linear_flops(B, K, D, H * c.pool_kernel)  # tap predictors
    return flops


@register
class PoolingformerMixer(TokenMixer):
    spec = MixerSpec(
        name="poolingformer",
        title="Poolingformer: Long Document Modeling with Pooling Attention",
        arxiv="2105.04371",
        year=2021,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=poolingformer_flops,
        cost_note=(
            "O(T·(w1 + w2/xi)·D) attention + O(T·D·kappa/xi) pooling + 7 projections; "
            "scores O(B·H·T·(w1 + w2/xi))"
        ),
        causal=False,
        key_padding_mask=True,
        approximates_softmax=True,
        deviations=(
            "no reference code: w1/w2 full widths; level 2 reads x + y; shared W_O after the sum; fixed "
            "global grid anchored at 0 with ceil((T+off)/xi) slots; real-only pooling, empty slots masked; "
            "conv init 1/kappa; ldconv taps from the slot's mean input, separate K/V predictors, H_c = heads; attention dropout "
            "(off by default) on both levels' weights"
        ),
    )
    Config = PoolingformerConfig

    def __init__(self, config: PoolingformerConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, H, kernel = config.dim, config.heads, config.pool_kernel
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.q2_proj = nn.Linear(D, D, **kw)
        self.k2_proj = nn.Linear(D, D, **kw)
        self.v2_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        if config.pool == "conv":
            # depthwise filters along the sequence, one per channel, starting as an average
            self.k_pool_weight = nn.Parameter(torch.empty((D, kernel), **kw))
            self.v_pool_weight = nn.Parameter(torch.empty((D, kernel), **kw))
        elif config.pool == "ldconv":
            self.k_pool_proj = nn.Linear(D, H * kernel, **kw)
            self.v_pool_proj = nn.Linear(D, H * kernel, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        if self.config.pool == "conv":
            self.k_pool_weight.fill_(1.0 / self.config.pool_kernel)
            self.v_pool_weight.fill_(1.0 / self.config.pool_kernel)

    def _pool(self, which: str, t: torch.Tensor, mask: torch.Tensor | None, taps: dict) -> tuple:
        """Pooled (B, K, D) keys or values and the slot mask (B, K)."""
        c = self.config
        if c.pool in ("mean", "max"):
            return grid_pool(t, mask, c.pool_kernel, c.pool_stride, c.pool)
        if c.pool == "conv":
            return grid_pool(t, mask, c.pool_kernel, c.pool_stride, "weighted", getattr(self, f"{which}_pool_weight"))
        return grid_pool(t, mask, c.pool_kernel, c.pool_stride, "weighted", taps[which])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        B, T, D = x.shape
        H = c.heads
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)
        p = attention_dropout_p(self)
        y = merge_heads(sliding_window_attention(q, k, v, c.local_window // 2, mask, dropout_p=p))  # (B, T, D)
        if c.pool_window > 0:
            u = x + y  # (B, T, D) residual between the levels
            taps = {}
            if c.pool == "ldconv":
                fdt = torch.promote_types(u.dtype, torch.float32)
                u_mean, _ = grid_pool(u, mask, c.pool_kernel, c.pool_stride, "mean")  # (B, K, D)
                K = u_mean.shape[1]
                for which in ("k", "v"):
                    logits = getattr(self, f"{which}_pool_proj")(u_mean).reshape(B, K, H, c.pool_kernel)
                    # tap weights in fp32 at least, like every softmax in the zoo
                    taps[which] = torch.softmax(logits, dim=-1, dtype=fdt).to(u.dtype)  # (B, K, H, kernel)
            k_bar, slot_real = self._pool("k", self.k2_proj(u), mask, taps)  # (B, K, D), (B, K)
            v_bar, _ = self._pool("v", self.v2_proj(u), mask, taps)  # (B, K, D)
            z = pooled_window_attention(
                split_heads(self.q2_proj(u), H),  # (B, H, T, P)
                split_heads(k_bar, H),  # (B, H, K, P)
                split_heads(v_bar, H),  # (B, H, K, P)
                slot_real,
                kernel=c.pool_kernel,
                stride=c.pool_stride,
                window=c.pool_window,
                dropout_p=p,
            )  # (B, H, T, P)
            y = y + merge_heads(z)  # (B, T, D)
        return zero_padded(self.out_proj(y), mask)

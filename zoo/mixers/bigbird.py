"""BigBird (ITC): block-sparse attention with a sliding window, global and random blocks.

Paper
    Zaheer, Guruganesh, Dubey, Ainslie, Alberti, Ontanon, Pham, Ravula, Wang, Yang, Ahmed,
    "Big Bird: Transformers for Longer Sequences", NeurIPS 2020, arXiv 2007.14062. Reference code:
    google-research/bigbird and the transformers port (``BigBirdBlockSparseAttention``).

Mechanism
    The sequence is cut into blocks of b = ``block_size`` tokens; n = number of blocks up to the
    last real token. Query blocks 0 and n-1 are global: they attend to every real key, and every
    query block attends to them. Every other query block j attends, in one softmax, to key blocks
    {j-1, j, j+1} ∪ {0, n-1} ∪ R_j, where R_j holds r = ``num_random_blocks`` distinct random
    blocks outside the window and the global blocks (drawn per head; a block never appears twice).
    The key blocks of each query block are gathered, so memory is O(T·(5 + r)·b), never T x T.
    When n <= 5 + 2r (T <= (5 + 2r)·b, the threshold of the transformers port) the sequence uses
    full softmax attention instead.

    Precision: attention runs in fused SDPA calls in the input (or autocast's) dtype; the fused
    kernels accumulate the softmax in fp32.

Deviations
    * Randomness: a module-owned ``torch.Generator`` (seeded by ``seed``) draws a fresh pattern per
      call and per head in training (``resample_in_train=True``); in eval the pattern is a fixed
      function of (seed, n), so outputs are deterministic (the reference uses NumPy's global RNG;
      recent transformers versions point every eval random block at block 0, duplicating it).
      Sequences of equal n in a batch share the pattern, as all sequences do in the reference.
    * Blocks are counted up to each sequence's last real token, so the last global block is the
      last block holding a real token and padding never changes real outputs (C3). The reference
      uses the padded length (its last "global" block may be padding).
    * The full-attention fallback is decided per sequence on that real length.
    * ``attention_dropout`` (default 0) drops attention weights in training; not causal; padded
      output rows are zeroed (C2).
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
    attention_dropout_field,
    attention_dropout_p,
    cfg,
    check_inputs,
    check_positive_int,
    keep_mask,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import linear_flops, merge_heads, neg_value, sdpa_attention, split_heads
from zoo.registry import register


@dataclass(frozen=True)
class BigBirdConfig(MixerConfig):
    block_size: int = cfg(64, "block size b (tokens per block)")
    num_random_blocks: int = cfg(3, "random key blocks r per query block (per head)")
    seed: int = cfg(0, "seed of the module's generator and of the fixed eval pattern")
    resample_in_train: bool = cfg(True, "draw a fresh random pattern every training call (False: the eval pattern)")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("block_size", self.block_size)
        check_positive_int("num_random_blocks", self.num_random_blocks, minimum=0)
        check_positive_int("seed", self.seed, minimum=0)
        if not isinstance(self.resample_in_train, bool):
            raise ZooValueError(f"resample_in_train: expected a bool, got {self.resample_in_train!r}")

    @property
    def full_attention_blocks(self) -> int:
        """Sequences with at most this many blocks use full attention (5 + 2r, as transformers)."""
        return 5 + 2 * self.num_random_blocks

    @classmethod
    def tiny(cls) -> "BigBirdConfig":
        return cls(dim=16, heads=2, block_size=2, num_random_blocks=1)


def bigbird_flops(c: BigBirdConfig, B: int, T: int, causal: bool = False) -> float:
    D, b = c.dim, c.block_size
    flops = linear_flops(B, T, D, D, count=4)  # q, k, v, out
    n = -(-T // b)
    if n <= c.full_attention_blocks:
        return flops + 4.0 * B * T * T * D
    Tp = n * b
    flops += 4.0 * B * Tp * (5 + c.num_random_blocks) * b * D  # every query block vs its 5 + r key blocks
    flops += 4.0 * B * 2 * b * Tp * D  # the two global query blocks vs all keys
    return flops


def sample_random_blocks(n: int, r: int, heads: int, generator: torch.Generator) -> torch.Tensor:
    """(heads, n, r) int64: for query block j in 1..n-2, r distinct blocks outside {0, j-1, j, j+1, n-1}.

    Rows 0 and n-1 (global) are -1. Needs n >= 5 + r. Each draw is uniform over the allowed
    blocks without replacement: the t-th value is uniform on the C - t blocks still free, mapped
    to the free blocks in increasing order by skipping the taken and excluded ones (O(n r^2)).
    """
    out = torch.full((heads, n, r), -1, dtype=torch.long)
    if n < 3 or r == 0:
        return out
    j = torch.arange(1, n - 1)  # (J,) the non-global query blocks
    excluded = torch.stack([torch.zeros_like(j), j - 1, j, j + 1, torch.full_like(j, n - 1)], dim=1)  # (J, 5)
    excluded = excluded.sort(dim=1).values
    dup = torch.zeros_like(excluded, dtype=torch.bool)
    dup[:, 1:] = excluded[:, 1:] == excluded[:, :-1]  # j = 1 and j = n-2 exclude only 4 blocks
    excluded = excluded.masked_fill(dup, n + 1)  # a sentinel no value reaches
    free = n - (~dup).sum(dim=1)  # (J,) allowed blocks per row
    if int(free.min()) < r:
        raise ValueError(f"sample_random_blocks: n={n} blocks leave fewer than r={r} free blocks")
    u = torch.rand(heads, j.numel(), r, generator=generator, dtype=torch.float64)  # (H, J, r)
    taken = torch.empty(heads, j.numel(), 0, dtype=torch.long)  # (H, J, t) sorted
    for t in range(r):
        x = (u[..., t] * (free - t)).long().clamp_max(free - t - 1)  # (H, J) uniform in [0, free - t)
        for s in range(t):  # the x-th index in [0, free) not yet taken
            x = x + (x >= taken[..., s]).long()
        taken = torch.cat([taken, x[..., None]], dim=-1).sort(dim=-1).values  # (H, J, t + 1)
    blocks = taken
    for e in range(excluded.shape[1]):  # index among the free blocks -> block id
        blocks = blocks + (blocks >= excluded[None, :, e, None]).long()
    out[:, 1 : n - 1] = blocks
    return out


def _fixed_generator(seed: int, n: int) -> torch.Generator:
    # the eval pattern depends on (seed, n) only: never on call history or batch composition
    return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + n)


@register
class BigBirdMixer(TokenMixer):
    spec = MixerSpec(
        name="bigbird",
        title="Big Bird: Transformers for Longer Sequences",
        arxiv="2007.14062",
        year=2020,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=bigbird_flops,
        cost_note="O(T·(5 + r)·b·D + 2·b·T·D) time, O(B·T·(5 + r)·b) memory; full attention when T <= (5 + 2r)·b",
        causal=False,
        key_padding_mask=True,
        stochastic=True,
        approximates_softmax=True,
        deviations=(
            "seeded torch generator (fresh pattern per call in training, fixed in eval); blocks counted "
            "up to the last real token (padding invariant); per-sequence fallback; attention dropout off by default"
        ),
    )
    Config = BigBirdConfig

    def __init__(self, config: BigBirdConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)

    def _init_weights(self) -> None:
        self.generator.manual_seed(self.config.seed)  # training draws restart as after construction

    def reseed(self, seed: int) -> None:
        """Restart the training-time draws from ``seed`` (the eval pattern follows ``config.seed``)."""
        self.generator.manual_seed(seed)

    def num_blocks(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,) int64: blocks up to the last real token of each sequence (0 when fully padded)."""
        T = mask.shape[1]
        last = (mask * torch.arange(1, T + 1, device=mask.device)).amax(dim=1)  # (B,) last real position + 1
        return -(-last // self.config.block_size)

    def random_blocks(self, n_blocks: torch.Tensor, total_blocks: int) -> torch.Tensor:
        """(B, H, total_blocks, r) int64 random key blocks per query block; -1 where none.

        Sequences with n blocks share one pattern per head: the fixed one of (seed, n) in eval (or
        with ``resample_in_train=False``), else a fresh draw from ``self.generator``. Sequences that
        use full attention (n <= 5 + 2r) get none. Calling it again with the generator in the same
        state returns what ``forward`` used.
        """
        c = self.config
        B, H, r = n_blocks.shape[0], c.heads, c.num_random_blocks
        out = torch.full((B, H, total_blocks, r), -1, dtype=torch.long)
        fresh = self.training and c.resample_in_train
        for n in sorted(set(n_blocks.tolist())):
            if n <= c.full_attention_blocks:
                continue
            gen = self.generator if fresh else _fixed_generator(c.seed, n)
            pattern = sample_random_blocks(n, r, H, gen)  # (H, n, r)
            rows = (n_blocks == n).nonzero().flatten().cpu()
            out[rows, :, :n] = pattern
        return out.to(n_blocks.device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        B, T, D = x.shape
        H = self.config.heads
        m = keep_mask(x, mask)  # (B, T)
        n_blocks = self.num_blocks(m)  # (B,)
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)

        p = attention_dropout_p(self)
        short = n_blocks <= self.config.full_attention_blocks  # (B,) full-attention sequences
        n_short = int(short.sum())  # host sync: picks the code paths
        if n_short == B:
            # every real token lies in the first (5 + 2r) b positions: attend there only
            Ts = min(T, self.config.full_attention_blocks * self.config.block_size)
            o = sdpa_attention(q[:, :, :Ts], k[:, :, :Ts], v[:, :, :Ts], None if mask is None else mask[:, :Ts], dropout_p=p)
            o = F.pad(o, (0, 0, 0, T - Ts))  # (B, H, T, P)
        else:
            nb = -(-T // self.config.block_size)
            if n_short == 0:
                o = self._block_sparse(q, k, v, m, n_blocks, self.random_blocks(n_blocks, nb))  # (B, H, T, P)
            else:
                long_rows = (~short).nonzero().flatten()  # (B_l,)
                rand = self.random_blocks(n_blocks[long_rows], nb)
                o_long = self._block_sparse(
                    q[long_rows], k[long_rows], v[long_rows], m[long_rows], n_blocks[long_rows], rand
                )  # (B_l, H, T, P)
                short_rows = short.nonzero().flatten()  # (B_s,)
                Ts = min(T, self.config.full_attention_blocks * self.config.block_size)  # their real span
                o_short = sdpa_attention(
                    q[short_rows, :, :Ts], k[short_rows, :, :Ts], v[short_rows, :, :Ts], m[short_rows, :Ts], dropout_p=p
                )  # (B_s, H, Ts, P)
                o = q.new_zeros(B, H, T, q.shape[-1])  # (B, H, T, P)
                o = o.index_put((long_rows,), o_long)
                o = o.index_put((short_rows,), F.pad(o_short, (0, 0, 0, T - Ts)))
        y = self.out_proj(merge_heads(o))  # (B, T, D)
        return zero_padded(y, mask)

    def _block_sparse(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        m: torch.Tensor,
        n_blocks: torch.Tensor,
        rand: torch.Tensor,
    ) -> torch.Tensor:
        """ITC attention for sequences with n_blocks > 5 + 2r; q, k, v (B, H, T, P), rand (B, H, nb, r).

        Per head, the K = 5 + r key blocks of every query block are gathered as whole rows
        (``index_select`` of contiguous b*P blocks) into (B*H, nb, K*b, P); one fused SDPA call
        with a key bias broadcast over the block's queries; then the 2 global query blocks.
        """
        p = attention_dropout_p(self)
        B, H, T, P = q.shape
        b = self.config.block_size
        nb = -(-T // b)
        Tp = nb * b
        device = q.device
        pad = (0, 0, 0, 0, 0, Tp - T)
        # head-major, contiguous (B, H, Tp, P): each (head, block) is one contiguous b*P row
        q, k, v = (F.pad(t, (0, 0, 0, Tp - T)).contiguous() for t in (q, k, v))  # (B, H, Tp, P)
        mp = F.pad(m, (0, Tp - T), value=False)  # (B, Tp)

        # key blocks of query block j: [j-1, j, j+1, 0, n-1, R_j]  (B, H, nb, K)
        j = torch.arange(nb, device=device)  # (nb,)
        n = n_blocks[:, None]  # (B, 1)
        win = torch.stack([j - 1, j, j + 1], dim=-1).expand(B, nb, 3)  # (B, nb, 3)
        glob = torch.stack([torch.zeros_like(n), n - 1], dim=-1).expand(B, nb, 2)  # (B, nb, 2)
        middle = (j >= 1) & (j <= n - 2)  # (B, nb): the rows computed here (global rows come later)
        valid_win = middle[..., None] & (win < n[..., None])  # (B, nb, 3); j-1 >= 0 for middle rows
        # a global block already in the window is not counted twice
        valid_glob = middle[..., None] & torch.stack([(j != 1).expand(B, nb), j + 1 != n - 1], dim=-1)  # (B, nb, 2)
        fixed = torch.cat([win, glob], dim=-1)[:, None].expand(B, H, nb, 5)  # (B, H, nb, 5)
        ids = torch.cat([fixed, rand.clamp_min(0)], dim=-1).clamp(0, nb - 1)  # (B, H, nb, K)
        slot_ok = torch.cat(
            [torch.cat([valid_win, valid_glob], dim=-1)[:, None].expand(B, H, nb, 5), rand >= 0], dim=-1
        )  # (B, H, nb, K)
        K = ids.shape[-1]

        # gather whole blocks as rows: row (bi*H + h)*nb + id of the (B*H*nb, b*P) view
        base = torch.arange(B * H, device=device).reshape(B, H, 1, 1) * nb  # (B, H, 1, 1)
        rows = (base + ids).reshape(-1)  # (B*H*nb*K,)
        kb = k.reshape(B * H * nb, b * P).index_select(0, rows).reshape(B * H, nb, K * b, P)  # (B*H, nb, K*b, P)
        vb = v.reshape(B * H * nb, b * P).index_select(0, rows).reshape(B * H, nb, K * b, P)  # (B*H, nb, K*b, P)
        mrows = (torch.arange(B, device=device).reshape(B, 1, 1, 1) * nb + ids).reshape(-1)  # (B*H*nb*K,)
        real = mp.reshape(B * nb, b).index_select(0, mrows).reshape(B, H, nb, K, b)  # (B, H, nb, K, b)
        allowed = (real & slot_ok[..., None]).reshape(B * H, nb, 1, K * b)  # (B*H, nb, 1, K*b)
        has_any = allowed.any(dim=-1, keepdim=True)  # (B*H, nb, 1, 1)

        qb = q.reshape(B * H, nb, b, P)  # (B*H, nb, b, P)
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=device)  # (B*H, nb, 1, K*b)
        bias.masked_fill_(~allowed, neg_value(q.dtype))
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias, dropout_p=p)  # (B*H, nb, b, P)
        o = (o * has_any.to(o.dtype)).reshape(B, H, Tp, P)  # rows without keys (global, padding) are zero

        # global query blocks 0 and n-1: full rows over every real key
        pos = torch.cat([torch.arange(b, device=device)[None, :].expand(B, b),
                         (n - 1) * b + torch.arange(b, device=device)[None, :]], dim=1)  # (B, 2b)
        take = pos[:, None, :, None].expand(B, H, 2 * b, P)  # (B, H, 2b, P)
        og = sdpa_attention(q.gather(2, take), k, v, mp, dropout_p=p)  # (B, H, 2b, P)
        o = o.scatter(2, take, og)  # (B, H, Tp, P)
        return o[:, :, :T]  # (B, H, T, P)

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
    full softmax attention instead; the spec says so (``class_from`` = (5 + 2r)·b + 1), so the
    report fits the linear classes on the longer lengths only.

    Precision: attention runs in fused SDPA calls in the input (or autocast's) dtype; the fused
    kernels accumulate the softmax in fp32.

Deviations
    * Randomness: counter-based uniforms on the input's device (``zoo.rng``: a splitmix64 stream
      whose state is a module buffer, seeded by ``seed``) draw a fresh pattern per call and per head
      in training (``resample_in_train=True``); in eval the pattern is a fixed function of
      (seed, n), so outputs are deterministic (the reference uses NumPy's global RNG;
      recent transformers versions point every eval random block at block 0, duplicating it).
      Sequences of equal n in a batch share the pattern, as all sequences do in the reference.
    * Blocks are counted up to each sequence's last real token, so the last global block is the
      last block holding a real token and padding never changes real outputs (C3). The reference
      uses the padded length (its last "global" block may be padding).
    * The full-attention fallback is decided per sequence on that real length. No host sync: the
      code path depends on T only (with a mask and T > (5 + 2r) b every sequence runs the sparse
      path and the short ones also full attention over their first (5 + 2r) b positions, selected
      per sequence), so the forward compiles with ``fullgraph=True``.
    * ``attention_dropout`` (default 0) drops attention weights in training; not causal; padded
      output rows are zeroed (C2).
"""

from __future__ import annotations

import dataclasses
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
from zoo.rng import counter_uniform, fixed_key, next_key, stream_start


@dataclass(frozen=True)
class BigBirdConfig(MixerConfig):
    block_size: int = cfg(64, "block size b (tokens per block)")
    num_random_blocks: int = cfg(3, "random key blocks r per query block (per head)")
    seed: int = cfg(0, "seed of the training draws and of the fixed eval pattern")
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


def random_blocks_from_uniforms(u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Random key blocks from uniforms, on u's device with no host sync.

    u (B, H, J, r) float64 in [0, 1): slot t of query block j of row b; n (B,) int64 blocks of
    each row. Returns (B, H, J, r) int64: for query block j in 1..n-2, r distinct blocks outside
    {0, j-1, j, j+1, n-1}; -1 for rows 0, n-1 and beyond. Needs n >= 5 + r (rows that break it
    get clamped, meaningless ids). The t-th value is uniform on the C - t blocks still free, mapped
    to the free blocks in increasing order by skipping the taken and excluded ones (O(J r^2)).
    """
    B, H, J, r = u.shape
    j = torch.arange(J, device=u.device)[None, :]  # (1, J)
    nn = n[:, None]  # (B, 1)
    zero = torch.zeros_like(j).expand(B, J)
    excluded = torch.stack([zero, (j - 1).expand(B, J), j.expand(B, J), (j + 1).expand(B, J),
                            (nn - 1).expand(B, J)], dim=-1)  # (B, J, 5)
    excluded = excluded.sort(dim=-1).values
    dup = torch.zeros_like(excluded, dtype=torch.bool)
    dup[..., 1:] = excluded[..., 1:] == excluded[..., :-1]  # j = 1 and j = n-2 exclude only 4 blocks
    excluded = excluded.masked_fill(dup, J + 2)  # a sentinel no value reaches
    free = (nn - (~dup).sum(dim=-1)).clamp_min(r)[:, None]  # (B, 1, J) allowed blocks per row
    blocks = torch.zeros(B, H, J, 0, dtype=torch.long, device=u.device)  # (B, H, J, t), sorted
    for t in range(r):
        x = torch.minimum((u[..., t] * (free - t)).long(), free - t - 1)  # (B, H, J) uniform in [0, free - t)
        for s in range(t):  # the x-th index in [0, free) not yet taken
            x = x + (x >= blocks[..., s]).long()
        blocks = torch.cat([blocks, x[..., None]], dim=-1).sort(dim=-1).values  # (B, H, J, t + 1)
    for e in range(excluded.shape[-1]):  # index among the free blocks -> block id
        blocks = blocks + (blocks >= excluded[:, None, :, e, None]).long()
    rows = (j >= 1) & (j <= nn - 2)  # (B, J)
    return blocks.masked_fill(~rows[:, None, :, None], -1)


def sample_random_blocks(n: int, r: int, heads: int, generator: torch.Generator) -> torch.Tensor:
    """(heads, n, r) int64 from a CPU generator: :func:`random_blocks_from_uniforms` for one sequence.

    Rows 0 and n-1 (global) are -1. Needs n >= 5 + r.
    """
    if n < 3 or r == 0:
        return torch.full((heads, n, r), -1, dtype=torch.long)
    if n - 5 < r:
        raise ValueError(f"sample_random_blocks: n={n} blocks leave fewer than r={r} free blocks")
    u = torch.zeros(1, heads, n, r, dtype=torch.float64)
    u[0, :, 1 : n - 1] = torch.rand(heads, n - 2, r, generator=generator, dtype=torch.float64)  # (H, J, r)
    return random_blocks_from_uniforms(u, torch.tensor([n]))[0]


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
            "seeded counter-based draws on the device (fresh pattern per call in training, fixed in eval); blocks counted "
            "up to the last real token (padding invariant); per-sequence fallback; attention dropout off by default"
        ),
    )
    Config = BigBirdConfig

    @classmethod
    def spec_for(cls, config: BigBirdConfig) -> MixerSpec:
        # T <= (5 + 2r)·b is full attention (quadratic): the linear classes hold from the next token
        return dataclasses.replace(cls.spec, class_from=config.full_attention_blocks * config.block_size + 1)

    def __init__(self, config: BigBirdConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        # splitmix64 state of the training draws, on the module's device (not in the state_dict)
        self.register_buffer("draw_state", torch.zeros((), dtype=torch.int64, device=device), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        self.reseed(self.config.seed)  # training draws restart as after construction (also after to_empty)

    def reseed(self, seed: int) -> None:
        """Restart the training-time draws from ``seed`` (the eval pattern follows ``config.seed``)."""
        with torch.no_grad():
            self.draw_state.fill_(stream_start(seed))

    def num_blocks(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,) int64: blocks up to the last real token of each sequence (0 when fully padded)."""
        T = mask.shape[1]
        last = (mask * torch.arange(1, T + 1, device=mask.device)).amax(dim=1)  # (B,) last real position + 1
        return -(-last // self.config.block_size)

    def random_blocks(self, n_blocks: torch.Tensor, total_blocks: int) -> torch.Tensor:
        """(B, H, total_blocks, r) int64 random key blocks per query block; -1 where none.

        Drawn on n_blocks' device from counter-based uniforms of (key, head, query block, slot):
        the key is fixed by ``seed`` in eval (or with ``resample_in_train=False``), else the next
        key of the module's stream (``draw_state``). Sequences with the same n share the pattern,
        a pure function of (key, n); sequences that use full attention (n <= 5 + 2r) get none.
        Calling it again with ``draw_state`` restored returns what ``forward`` used.
        """
        c = self.config
        B, H, r = n_blocks.shape[0], c.heads, c.num_random_blocks
        dev = n_blocks.device
        if self.training and c.resample_in_train:
            key = next_key(self.draw_state)  # (,) on the module's device
        else:
            key = torch.full((), fixed_key(c.seed), dtype=torch.int64, device=dev)
        lane = torch.arange(H, device=dev)[:, None] * (1 << 32) + torch.arange(total_blocks, device=dev)  # (H, J)
        u = counter_uniform(key, lane[..., None], torch.arange(r, device=dev))  # (H, J, r)
        sparse = n_blocks > c.full_attention_blocks  # (B,)
        n_safe = torch.where(sparse, n_blocks, c.full_attention_blocks + 1)  # valid input for every row
        blocks = random_blocks_from_uniforms(u.expand(B, H, total_blocks, r), n_safe)  # (B, H, J, r)
        return blocks.masked_fill(~sparse[:, None, None, None], -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        B, T, D = x.shape
        H, b = self.config.heads, self.config.block_size
        full = self.config.full_attention_blocks
        m = keep_mask(x, mask)  # (B, T)
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)

        # No host sync: the code path depends on T only. Every sequence is short when T <= (5 + 2r) b;
        # otherwise all run the block-sparse path, and with a mask the sequences whose real tokens
        # end within (5 + 2r) b positions take full attention over that span instead (a select).
        p = attention_dropout_p(self)
        nb = -(-T // b)
        Ts = min(T, full * b)
        if nb <= full:
            o = sdpa_attention(q, k, v, mask, dropout_p=p)  # (B, H, T, P)
        else:
            n_blocks = self.num_blocks(m)  # (B,)
            o = self._block_sparse(q, k, v, m, n_blocks, self.random_blocks(n_blocks, nb))  # (B, H, T, P)
            if mask is not None:
                o_short = sdpa_attention(q[:, :, :Ts], k[:, :, :Ts], v[:, :, :Ts], m[:, :Ts], dropout_p=p)  # (B, H, Ts, P)
                short = (n_blocks <= full)[:, None, None, None]  # (B, 1, 1, 1)
                o = torch.where(short, F.pad(o_short, (0, 0, 0, T - Ts)), o)  # (B, H, T, P)
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
        last = (n - 1).clamp_min(0)  # (B, 1); rows with n = 0 are discarded by the caller
        pos = torch.cat([torch.arange(b, device=device)[None, :].expand(B, b),
                         last * b + torch.arange(b, device=device)[None, :]], dim=1)  # (B, 2b)
        take = pos[:, None, :, None].expand(B, H, 2 * b, P)  # (B, H, 2b, P)
        og = sdpa_attention(q.gather(2, take), k, v, mp, dropout_p=p)  # (B, H, 2b, P)
        o = o.scatter(2, take, og)  # (B, H, Tp, P)
        return o[:, :, :T]  # (B, H, T, P)

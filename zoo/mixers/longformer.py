"""Longformer: sliding-window attention plus task-chosen global tokens.

Paper
    Beltagy, Peters, Cohan, "Longformer: The Long-Document Transformer", 2020, arXiv 2004.05150.
    Reference code: allenai/longformer (``sliding_chunks``, TVM kernel) and the transformers port
    (``LongformerSelfAttention``).

Mechanism
    Every non-global query i attends, in one softmax, to the keys j = i + dilation*t,
    t in [-window, window] (``window`` is one-sided: HF's ``attention_window`` = 2 * window) that
    are real and not global, plus every global key, all from the local projections
    q_proj/k_proj/v_proj. Global tokens (``num_global`` leading real tokens, or a ``global_mask``
    (B, T) forward argument) get their whole row recomputed with the separate projections
    q_global/k_global/v_global over all real keys. The band is blocked: queries are cut into blocks
    of ``block_size`` positions that score the block + 2*window keys around them under a band mask
    (:func:`zoo.functional.sliding_window_attention`), so memory is O(T·window), never T x T; the
    band and the global-key columns are merged by their log-sum-exp into the joint softmax.
    W_O follows; 7 D^2 + 7 D parameters.

    Precision: band and global-key scores, their softmax and the log-sum-exp merge run in at
    least fp32.

Deviations
    * ``window`` is the one-sided width of the paper / allenai config (HF's attention_window is 2x).
    * The zoo pads internally only to the query block (not to a multiple of 2*window as HF does);
      results are identical because out-of-range keys are masked either way.
    * Dilation and causal mode exist in the paper only through the TVM kernel; here both run on the
      same blocked band (dilation by splitting the sequence into its ``dilation`` residue classes).
    * Causal mode with global tokens (the spec leaves it undefined; the paper disallows it): a global
      token attends to the real keys j <= i only and is seen only by queries at or after it, so the
      output stays causal (leading global tokens then act as always-visible "sink" tokens).
    * With padding, ``num_global`` marks the first real tokens (not the first positions). An explicit
      ``global_mask`` replaces ``num_global``; padded tokens are never global.
    * A call without global tokens adds an exact zero computed from q/k/v_global, so those
      projections get zero gradients instead of none (plain DDP needs every parameter used).
    * ``attention_dropout`` (default 0, training only) drops the joint softmax weights of every
      row as the transformers port does after its softmax over band + global keys (there on the
      merged (T, 2w+1+g) matrix, here on each part: the band's weights (SDPA's ``dropout_p``, or
      dropout before the log-sum-exp merge, which rescales parts elementwise, so it is the same
      thing) and the global-key weights), and the global rows' weights (the port's dropout on its
      global attention probabilities). Padded output rows are zeroed (C2). With ``num_global`` the number of
      global columns is static (min(num_global, T); unused slots are masked), so the forward has no
      host sync and compiles with ``fullgraph=True``. An explicit ``global_mask`` costs one host sync
      per call (its largest count sets the number of global columns; HF does the same).
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
from zoo.errors import ZooTypeError, ZooValueError
from zoo.functional import (
    linear_flops,
    merge_heads,
    merge_softmax_parts,
    neg_value,
    sliding_window_attention,
    split_heads,
)
from zoo.registry import register
from zoo.state import StateSize, keep_last


@dataclass(frozen=True)
class LongformerConfig(MixerConfig):
    window: int = cfg(256, "one-sided window w: query i sees keys i-w..i+w (HF attention_window = 2w)")
    num_global: int = cfg(0, "the first num_global real tokens are global (0 = none)")
    dilation: int = cfg(1, "dilation d: window keys i + d*t, t in [-w, w]")
    block_size: int = cfg(0, "query block of the blocked band (0 = min(window, 128))")
    init_global_from_local: bool = cfg(True, "initialise q/k/v_global as copies of q/k/v_proj")
    attention_dropout: float = attention_dropout_field()

    def validate(self) -> None:
        check_positive_int("window", self.window)
        check_positive_int("num_global", self.num_global, minimum=0)
        check_positive_int("dilation", self.dilation)
        check_positive_int("block_size", self.block_size, minimum=0)
        if not isinstance(self.init_global_from_local, bool):
            raise ZooValueError(
                f"init_global_from_local: expected a bool, got {self.init_global_from_local!r}"
            )

    @property
    def query_block(self) -> int:
        return self.block_size or min(self.window, 128)

    @classmethod
    def tiny(cls) -> "LongformerConfig":
        return cls(dim=16, heads=2, window=4, num_global=2, block_size=3)


def _band_cost(c: LongformerConfig, T: int, causal: bool) -> tuple[int, int]:
    """(query rows incl. block padding, keys scored per row) of the blocked band at length T."""
    d = c.dilation
    n = -(-T // d)  # positions per residue class
    w = min(c.window, max(n - 1, 0))
    blk = max(1, min(c.query_block, n))
    rows = d * (-(-n // blk) * blk)
    return rows, blk + (w if causal else 2 * w)


def longformer_flops(c: LongformerConfig, B: int, T: int, causal: bool = False) -> float:
    D, g = c.dim, min(c.num_global, T)
    rows, span = _band_cost(c, T, causal)
    flops = linear_flops(B, T, D, D, count=4)  # q, k, v, out
    flops += 4.0 * B * rows * span * D  # band: Q K^T and P V over `span` keys per row
    if g:
        flops += linear_flops(B, T, D, D, count=2) + linear_flops(B, g, D, D)  # k/v_global, q_global
        flops += 4.0 * B * T * g * D  # every query against the global keys
        flops += 4.0 * B * g * T * D  # global rows over all keys
    return flops


@register
class LongformerMixer(TokenMixer):
    spec = MixerSpec(
        name="longformer",
        title="Longformer: The Long-Document Transformer",
        arxiv="2004.05150",
        year=2020,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=longformer_flops,
        cost_note="O(T·(2w + c + g)·D) time, O(B·H·T·(2w + c + g)) memory; w = window, c = query block, g = globals",
        causal=True,
        key_padding_mask=True,
        stochastic=False,
        approximates_softmax=True,
        deviations=(
            "one-sided window; padded only to the query block; dilation and causal on the blocked band; "
            "causal global tokens see only their past; attention dropout off by default"
        ),
        extra_inputs=("global_mask",),
        # the last dilation*window positions' keys/values plus the num_global global tokens
        state=StateSize.WINDOW,
    )
    Config = LongformerConfig

    def __init__(self, config: LongformerConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.q_global = nn.Linear(D, D, **kw)
        self.k_global = nn.Linear(D, D, **kw)
        self.v_global = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        if self.config.init_global_from_local:
            for local, glob in ((self.q_proj, self.q_global), (self.k_proj, self.k_global), (self.v_proj, self.v_global)):
                glob.weight.copy_(local.weight)
                glob.bias.copy_(local.bias)

    def global_tokens(
        self, mask: torch.Tensor, global_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) bool: the global tokens (explicit ``global_mask``, else the first num_global real ones)."""
        if global_mask is not None:
            return global_mask & mask
        g = self.config.num_global
        if g == 0:
            return torch.zeros_like(mask)
        return mask & (torch.cumsum(mask, dim=1) <= g)  # (B, T)

    def _check_global_mask(self, global_mask, B: int, T: int, device) -> None:
        if global_mask is None:
            return
        if not isinstance(global_mask, torch.Tensor) or global_mask.dtype != torch.bool:
            got = global_mask.dtype if isinstance(global_mask, torch.Tensor) else type(global_mask).__name__
            raise ZooTypeError(f"longformer: global_mask: expected a bool tensor (True = global token), got {got}")
        if tuple(global_mask.shape) != (B, T):
            raise ZooValueError(f"longformer: global_mask: expected shape (B, T)=({B}, {T}), got {tuple(global_mask.shape)}")
        if global_mask.device != device:
            raise ZooValueError(f"longformer: global_mask: expected device {device} (same as x), got {global_mask.device}")

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        causal: bool = False,
        global_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: True runs the causal variant (position i sees j <= i).
        Extra inputs (``spec.extra_inputs``):
            global_mask: optional bool (B, T), True = global token (attends to and is seen by every real
            token); replaces ``num_global`` for this call; padded tokens are never global.
        """
        check_inputs(self, x, mask, causal)
        B, T, D = x.shape
        self._check_global_mask(global_mask, B, T, x.device)
        c = self.config
        H = c.heads
        m = keep_mask(x, mask)  # (B, T)
        gm = self.global_tokens(m, global_mask)  # (B, T)
        counts = gm.sum(dim=1)  # (B,)
        if global_mask is None:
            # static: slots past a sequence's own count are unused (gvalid), so no host sync
            g_max = min(c.num_global, T)
        else:
            g_max = int(counts.max())  # host sync (only here): an explicit global_mask sets the columns

        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)
        band_keys = mask if g_max == 0 else m & ~gm  # global keys leave the band (counted once)
        p = attention_dropout_p(self)
        kw = dict(window=c.window, mask=band_keys, causal=causal, dilation=c.dilation, block=c.query_block, dropout_p=p)
        if g_max == 0:
            o = sliding_window_attention(q, k, v, **kw)  # (B, H, T, P)
            if torch.is_grad_enabled():
                o = o + self._globals_take_part()  # exact zero; q/k/v_global get zero gradients
        else:
            o = self._with_globals(x, q, k, v, m, gm, counts, g_max, causal, kw)
        y = self.out_proj(merge_heads(o))  # (B, T, D)
        return zero_padded(y, mask)

    def _globals_take_part(self) -> torch.Tensor:
        """A 0-d exact zero that depends on q/k/v_global.

        A call without global tokens (the default ``num_global=0``) does not use the global
        projections; they exist because ``global_mask`` may name global tokens at any call. Adding
        this zero keeps them in the autograd graph with zero gradients, so plain
        ``DistributedDataParallel`` (no ``find_unused_parameters``) works whatever the batch holds.
        """
        params = [p for proj in (self.q_global, self.k_global, self.v_global) for p in (proj.weight, proj.bias)]
        return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0

    def _with_globals(self, x, q, k, v, m, gm, counts, g_max, causal, band_kw) -> torch.Tensor:
        B, H, T, P = q.shape
        scale = P**-0.5
        fdt = torch.promote_types(q.dtype, torch.float32)
        # positions of the global tokens first (in order), then the others: (B, g_max)
        order = torch.sort((~gm).to(torch.uint8), dim=1, stable=True).indices
        gidx = order[:, :g_max]  # (B, G)
        gvalid = torch.arange(g_max, device=x.device)[None, :] < counts[:, None]  # (B, G)
        pos = torch.arange(T, device=x.device)

        # (1) non-global rows: joint softmax over the band (global keys removed) and the global keys
        o_band, lse_band = sliding_window_attention(q, k, v, return_lse=True, **band_kw)  # (B, H, T, P), (B, H, T)
        take = gidx[:, None, :, None].expand(B, H, g_max, P)  # (B, H, G, P)
        kg, vg = k.gather(2, take), v.gather(2, take)  # (B, H, G, P)
        cols = gvalid[:, None, :]  # (B, 1, G): query i may see global key u
        if causal:
            cols = cols & (gidx[:, None, :] <= pos[None, :, None])  # (B, T, G)
        scores = torch.matmul(q, kg.transpose(-1, -2)).to(fdt) * scale  # (B, H, T, G)
        scores = scores.masked_fill(~cols[:, None], neg_value(fdt))
        lse_glob = torch.logsumexp(scores, dim=-1)  # (B, H, T)
        any_col = cols.any(dim=-1)[:, None]  # (B, 1, T or 1)
        probs = torch.exp(scores - lse_glob.unsqueeze(-1)) * any_col.unsqueeze(-1)  # (B, H, T, G)
        p = band_kw["dropout_p"]
        if p:
            probs = F.dropout(probs, p)  # (B, H, T, G): the global-key part of the joint softmax
        o_glob = torch.matmul(probs.to(v.dtype), vg)  # (B, H, T, P)
        lse_glob = lse_glob.masked_fill(~any_col, neg_value(fdt))
        o, _ = merge_softmax_parts([(o_band, lse_band), (o_glob, lse_glob)])  # (B, H, T, P)

        # (2) global rows: full attention with the global projections over every real key
        xg = x.gather(1, gidx[:, :, None].expand(B, g_max, x.shape[-1]))  # (B, G, D)
        qg = split_heads(self.q_global(xg), H)  # (B, H, G, P)
        kG = split_heads(self.k_global(x), H)  # (B, H, T, P)
        vG = split_heads(self.v_global(x), H)  # (B, H, T, P)
        keys = m[:, None, :]  # (B, 1, T)
        if causal:
            keys = keys & (pos[None, None, :] <= gidx[:, :, None])  # (B, G, T)
        keys = keys | ~keys.any(dim=-1, keepdim=True)  # empty rows (unused slots) stay finite
        og = F.scaled_dot_product_attention(qg, kG, vG, attn_mask=keys[:, None], dropout_p=p)  # (B, H, G, P)
        og = og * gvalid[:, None, :, None].to(og.dtype)
        # overwrite the global rows (unused slots point at non-global positions: masked out by gm)
        full = torch.zeros_like(o).scatter(2, take, og.to(o.dtype))  # (B, H, T, P)
        return torch.where(gm[:, None, :, None], full, o.to(q.dtype))  # (B, H, T, P)

    # -- generation: a window buffer of the last dilation*window positions plus the global tokens
    # (the first num_global real tokens; an explicit global_mask is not part of the state API) --

    def _state_tensors(self, batch, device, dtype):
        c = self.config
        H, P, G = c.heads, c.head_dim, c.num_global
        kv = dict(device=device, dtype=dtype)
        return {
            "k": torch.zeros(batch, H, 0, P, **kv),  # (B, H, L, P), L <= dilation*window
            "v": torch.zeros(batch, H, 0, P, **kv),  # (B, H, L, P)
            "band": torch.zeros(batch, 0, dtype=torch.bool, device=device),  # (B, L): real, not global
            "real": torch.zeros(batch, dtype=torch.long, device=device),  # real tokens seen
            "gpos": torch.zeros(batch, G, dtype=torch.long, device=device),  # positions of the globals
            "gvalid": torch.zeros(batch, G, dtype=torch.bool, device=device),
            # local-projection k/v (seen by every later query) and global-projection k/v (seen by
            # the global rows) of the global tokens: (B, H, G, P) each
            **{name: torch.zeros(batch, H, G, P, **kv) for name in ("gk", "gv", "gK", "gV")},
        }

    def _advance(self, x, mask, state):
        c, t = self.config, state.tensors
        H, n, p0 = c.heads, x.shape[1], state.position
        m = keep_mask(x, mask)  # (B, n)
        rank = t["real"][:, None] + torch.cumsum(m, dim=1)  # (B, n): 1-based rank of each real token
        gm = m & (rank <= c.num_global)  # (B, n): global tokens
        t["real"] = rank[:, -1]
        q = split_heads(self.q_proj(x), H)  # (B, H, n, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, n, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, n, P)
        if c.num_global:
            self._store_globals(x, k, v, gm, rank, p0, t)
        # joint softmax over the band (window keys that are real and not global) and the globals
        L = t["k"].shape[2]
        keys_k, keys_v = torch.cat([t["k"], k], dim=2), torch.cat([t["v"], v], dim=2)  # (B, H, L + n, P)
        band = torch.cat([t["band"], m & ~gm], dim=1)  # (B, L + n)
        qpos = torch.arange(p0, p0 + n, device=x.device)[:, None]  # (n, 1)
        diff = qpos - torch.arange(p0 - L, p0 + n, device=x.device)[None, :]  # (n, L + n)
        near = (diff >= 0) & (diff <= c.dilation * c.window) & (diff % c.dilation == 0)
        allowed = band[:, None, :] & near  # (B, n, L + n)
        seen = t["gvalid"][:, None, :] & (t["gpos"][:, None, :] <= qpos)  # (B, n, G)
        allowed = torch.cat([allowed, seen], dim=2)  # (B, n, L + n + G)
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # padded rows stay finite (zeroed later)
        o = F.scaled_dot_product_attention(
            q, torch.cat([keys_k, t["gk"]], dim=2), torch.cat([keys_v, t["gv"]], dim=2), attn_mask=allowed[:, None]
        )  # (B, H, n, P)
        if c.num_global:
            # a global row attends over every real key before it: all of them are global tokens
            og = F.scaled_dot_product_attention(
                split_heads(self.q_global(x), H), t["gK"], t["gV"], attn_mask=(seen | ~seen.any(-1, keepdim=True))[:, None]
            )  # (B, H, n, P)
            o = torch.where(gm[:, None, :, None], og, o)
        size = c.dilation * c.window
        t["k"], t["v"] = keep_last(t["k"], k, size, axis=2), keep_last(t["v"], v, size, axis=2)
        t["band"] = keep_last(t["band"], m & ~gm, size, axis=1)
        return self.out_proj(merge_heads(o))  # (B, n, D)

    def _store_globals(self, x, k, v, gm, rank, p0, t) -> None:
        """Put this chunk's global tokens into their slots (slot = rank - 1), out of place."""
        H, G = self.config.heads, self.config.num_global
        kG, vG = split_heads(self.k_global(x), H), split_heads(self.v_global(x), H)  # (B, H, n, P)
        slots = torch.arange(G, device=x.device)
        onehot = gm[:, :, None] & (rank[:, :, None] - 1 == slots)  # (B, n, G): token -> its slot
        has = onehot.any(dim=1)  # (B, G)
        pick = onehot.transpose(1, 2).unsqueeze(1)  # (B, 1, G, n)
        for name, src in (("gk", k), ("gv", v), ("gK", kG), ("gV", vG)):
            new = torch.matmul(pick.to(src.dtype), src)  # (B, H, G, P): a copy (one 1 per used slot)
            t[name] = torch.where(has[:, None, :, None], new, t[name])
        pos = torch.arange(p0, p0 + x.shape[1], device=x.device)
        t["gpos"] = torch.where(has, (onehot * pos[None, :, None]).sum(dim=1), t["gpos"])
        t["gvalid"] = t["gvalid"] | has

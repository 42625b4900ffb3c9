"""PoNet: token mixing by pooling at three granularities, fused with a per-token gate.

Paper
    Tan, Chen, Wang, Zhang, Lin, Wang, Ma, Zhang, "PoNet: Pooling Network for Efficient Token
    Mixing in Long Sequences", ICLR 2022, arXiv 2110.02442. Reference code: lxchtan/PoNet
    (``examples/LRA/code``; the HF-style ``modeling_ponet.py`` for sentence segments).

Mechanism
    Five projections of x: queries Q, keys K, gate G, segment input S and local input L (no value
    projection: the keys are the values). Global aggregation (GA): per head, the masked mean of the
    real queries attends over all real keys, ``g = softmax(mean(Q) K^T / sqrt(p)) K``, one vector
    per head. Segment max-pooling (SMP): ``s_i`` is the channel-wise maximum of S over the real
    tokens of i's segment; local max-pooling (LMP): ``l_i`` is the channel-wise maximum of L over
    the real tokens among ``i - k//2 .. i + k//2`` (k = ``local_kernel``, 3 in the paper). Fusion
    ``y_i = (g + s_i) * G_i + l_i`` (per channel), then the output projection W_O:
    6 D^2 + 6 D parameters.

    Segments: explicit ``segment_ids`` (B, T) passed to ``forward``, or fixed-size segments
    anchored at position 0: ``segment_len`` tokens each, or ``ceil(N_b / num_segments)`` tokens
    with N_b the number of real tokens of sequence b. The segment maximum runs on a reshape +
    ``amax`` when every sequence has the same segment length (``segment_backend="contiguous"``;
    ``"auto"`` picks it then), otherwise on ``Tensor.scatter_reduce(amax)`` (``"scatter"``) or the
    optional torch-scatter package (``"torch_scatter"``). All backends give identical outputs and,
    except torch-scatter on exact ties, identical gradients.

Deviations
    * Default segments are ``ceil(N_b / num_segments)`` tokens long, computed from the unpadded
      length N_b, so padding does not move segment boundaries (C3). The LRA code uses
      ``floor(n / S) + 1`` on the padded length n (fewer segments than asked for, a degenerate
      last one); ``faithful_segments=True`` reproduces that.
    * Padded rows of S and L are filled with ``finfo(dtype).min / 2`` (the code uses -1e4) before
      the max-pools, so real values below -1e4 still win; padded rows of y are zeroed with
      ``masked_fill``. A fully padded sequence gives zeros (the code divides by zero).
    * GA's mean and softmax run in at least fp32 (the LRA code runs the whole core in fp32); Q is
      not masked in place.
    * The HF pretraining version's special-token isolation (``clsgsepg``) is not implemented: it
      needs token ids, which a token mixer does not see; pass sentence ``segment_ids`` instead.
    * Host syncs: none without a mask, with ``segment_len`` or with ``faithful_segments`` (the
      forward then compiles with ``fullgraph=True``). With a mask and ``num_segments`` the segment
      lengths depend on each sequence's real length, and the number of segments (a shape) on the
      shortest: one host read per call (``.tolist()``); explicit ``segment_ids`` are range-checked
      on the host (one read). These are data-dependent shapes, so they stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.base import (
    Complexity,
    MixerConfig,
    MixerSpec,
    TokenMixer,
    ceil_div,
    cfg,
    check_choice,
    check_inputs,
    check_positive_int,
    zero_padded,
)
from zoo.errors import ZooTypeError, ZooValueError
from zoo.functional import (
    SEGMENT_BACKENDS,
    linear_flops,
    local_max_pool,
    neg_value,
    safe_key_mask,
    segment_ids_fixed,
    segment_max,
    segment_max_contiguous,
    torch_scatter_available,
)
from zoo.registry import register


@dataclass(frozen=True)
class PoNetConfig(MixerConfig):
    num_segments: int = cfg(64, "segments per sequence: segment length ceil(N / num_segments), N = real tokens")
    segment_len: int | None = cfg(None, "fixed segment length in tokens (overrides num_segments)")
    faithful_segments: bool = cfg(False, "LRA code's segment length floor(T / num_segments) + 1 on the padded T")
    local_kernel: int = cfg(3, "local max-pooling window in tokens (odd; the paper uses 3)")
    segment_backend: str = cfg("auto", "segment max: auto | scatter (scatter_reduce) | torch_scatter | contiguous")

    def validate(self) -> None:
        check_positive_int("num_segments", self.num_segments)
        if self.segment_len is not None:
            check_positive_int("segment_len", self.segment_len)
        if not isinstance(self.faithful_segments, bool):
            raise ZooValueError(f"faithful_segments: expected a bool, got {self.faithful_segments!r}")
        if self.faithful_segments and self.segment_len is not None:
            raise ZooValueError(
                f"faithful_segments: expected False when segment_len is set (the LRA formula uses "
                f"num_segments), got faithful_segments=True with segment_len={self.segment_len}"
            )
        check_positive_int("local_kernel", self.local_kernel)
        if self.local_kernel % 2 == 0:
            raise ZooValueError(f"local_kernel: expected an odd integer (a centred window), got {self.local_kernel}")
        check_choice("segment_backend", self.segment_backend, SEGMENT_BACKENDS)
        if self.segment_backend == "torch_scatter" and not torch_scatter_available():
            raise ZooValueError(
                "segment_backend: 'torch_scatter' needs the torch-scatter package (pip install "
                "torch-scatter, or the zoo's `scatter` extra), which is not importable here; "
                "got 'torch_scatter', use 'auto' or 'scatter'"
            )

    @classmethod
    def tiny(cls) -> "PoNetConfig":
        return cls(dim=16, heads=2, num_segments=4)


def ponet_flops(c: PoNetConfig, B: int, T: int, causal: bool = False) -> float:
    D = c.dim
    # GA: masked mean (1), scores (2), weighted key sum (2); SMP (1) and LMP (k - 1) comparisons;
    # fusion (3): all per token and channel.
    pooling = B * T * D * (1 + 2 + 2 + 1 + (c.local_kernel - 1) + 3)
    return linear_flops(B, T, D, D, count=6) + float(pooling)


@register
class PoNetMixer(TokenMixer):
    spec = MixerSpec(
        name="ponet",
        title="PoNet: Pooling Network for Efficient Token Mixing in Long Sequences",
        arxiv="2110.02442",
        year=2022,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=ponet_flops,
        cost_note=(
            "12·B·T·D^2 (six D x D projections) + B·T·D·(9 + k - 1) for GA, the two max-pools "
            "and the fusion (comparisons counted as 1 FLOP); memory O(B·T·D)"
        ),
        causal=False,
        key_padding_mask=True,
        deviations=(
            "segment length ceil(N_real / num_segments) from the unpadded length (LRA: floor(T/S)+1 "
            "on the padded T, kept as faithful_segments=True); finfo.min/2 instead of -1e4 for "
            "padded rows before max-pooling; no clsgsepg special-token handling"
        ),
        extra_inputs=("segment_ids",),
    )
    Config = PoNetConfig

    def __init__(self, config: PoNetConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)  # W_Q, "dense_q"
        self.k_proj = nn.Linear(D, D, **kw)  # W_K, keys and values of GA
        self.gate_proj = nn.Linear(D, D, **kw)  # W_G, the per-token gate ("dense_o" in the code)
        self.segment_proj = nn.Linear(D, D, **kw)  # W_S, input of segment max-pooling
        self.local_proj = nn.Linear(D, D, **kw)  # W_L, input of local max-pooling
        self.out_proj = nn.Linear(D, D, **kw)  # W_O

    # -- segments -----------------------------------------------------------------------------

    def segment_lengths(self, T: int, mask: torch.Tensor | None = None, batch: int = 1) -> list[int]:
        """Fixed segment length of each sequence (one entry per batch row) for input length T."""
        c = self.config
        if mask is not None:
            batch = mask.shape[0]
        if c.segment_len is not None:
            return [c.segment_len] * batch
        if c.faithful_segments:
            return [T // c.num_segments + 1] * batch
        real = [T] * batch if mask is None else mask.sum(dim=1).tolist()
        return [max(1, ceil_div(int(n), c.num_segments)) for n in real]

    def segment_ids(self, T: int, mask: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        """(B, T) fixed-size segment ids used when ``forward`` gets no ``segment_ids``.

        Built on the mask's device from the mask itself (no host round trip, no host-to-device copy).
        """
        c = self.config
        if mask is None or c.segment_len is not None or c.faithful_segments:
            lengths = self.segment_lengths(T, mask, batch)  # static: reads no mask values
            return segment_ids_fixed(lengths[0], T, len(lengths), None if mask is None else mask.device)
        real = mask.sum(dim=1)  # (B,) real tokens
        seg_len = torch.div(real + c.num_segments - 1, c.num_segments, rounding_mode="floor").clamp_min(1)  # (B,)
        return segment_ids_fixed(seg_len, T, mask.shape[0], mask.device)

    def _check_segment_ids(self, ids, B: int, T: int, device) -> int:
        name = self.spec.name
        if not isinstance(ids, torch.Tensor):
            raise ZooTypeError(
                f"{name}: segment_ids: expected an integer tensor of shape (B, T)=({B}, {T}), got {type(ids).__name__}"
            )
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ZooTypeError(f"{name}: segment_ids: expected an integer dtype, got {ids.dtype}")
        if tuple(ids.shape) != (B, T):
            raise ZooValueError(f"{name}: segment_ids: expected shape (B, T)=({B}, {T}), got {tuple(ids.shape)}")
        if ids.device != device:
            raise ZooValueError(f"{name}: segment_ids: expected device {device} (same as x), got {ids.device}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= T:
            raise ZooValueError(
                f"{name}: segment_ids: expected ids in [0, T) = [0, {T}), got values in [{lo}, {hi}]"
            )
        return hi + 1

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        causal: bool = False,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs (``spec.extra_inputs``):
            segment_ids: optional integer (B, T) in [0, T): tokens with the same id form one segment
            (e.g. sentences); None: fixed-size segments from ``num_segments`` / ``segment_len``.
        """
        check_inputs(self, x, mask, causal)
        B, T, D = x.shape
        H = self.config.heads
        P = D // H
        backend = self.config.segment_backend
        num_ids = None
        if segment_ids is not None:
            num_ids = self._check_segment_ids(segment_ids, B, T, x.device)
            if backend == "contiguous":
                raise ZooValueError(
                    "ponet: segment_backend: 'contiguous' needs fixed-size segments (num_segments or "
                    "segment_len), got explicit segment_ids; use 'auto' or 'scatter'"
                )
        pad_mask = mask  # an all-real mask takes the masked path too: deciding would cost a host sync

        # GA first: at inference its Q and K are freed before the other projections exist.
        g = self._global_aggregation(self.q_proj(x), self.k_proj(x), pad_mask, H, P).to(x.dtype)  # (B, 1, D)

        seg = self.segment_proj(x)  # (B, T, D)
        loc = self.local_proj(x)  # (B, T, D)
        if pad_mask is not None:
            # padded rows must never win a max (finite, so no inf arithmetic downstream); in place
            # on fresh projection outputs, which no backward formula has saved
            pad_rows = ~pad_mask.unsqueeze(-1)  # (B, T, 1)
            seg.masked_fill_(pad_rows, neg_value(x.dtype))
            loc.masked_fill_(pad_rows, neg_value(x.dtype))
        local = local_max_pool(loc, self.config.local_kernel)  # (B, T, D)
        del loc

        if segment_ids is None:
            lengths = self.segment_lengths(T, pad_mask, B)
            uniform = all(n == lengths[0] for n in lengths)
        else:
            uniform = False
        if uniform:
            seg_len = lengths[0]
            n_seg = ceil_div(T, seg_len)
            if backend in ("auto", "contiguous"):
                seg_max = segment_max_contiguous(seg, seg_len)  # (B, n_seg, D)
            else:
                ids = segment_ids_fixed(seg_len, T, B, x.device)  # (B, T)
                seg_max = segment_max(seg, ids, n_seg, backend)  # (B, n_seg, D)
            del seg
            gate = self.gate_proj(x)  # (B, T, D)
            y = self._fuse_uniform(local, g, seg_max, gate, seg_len)  # (B, T, D)
        else:
            if segment_ids is None:
                if backend == "contiguous":
                    raise ZooValueError(
                        "ponet: segment_backend: 'contiguous' needs the same segment length in every "
                        f"sequence, got lengths {sorted(set(lengths))} (num_segments={self.config.num_segments} "
                        "over different real lengths); use 'auto' or 'scatter', or set segment_len"
                    )
                ids = self.segment_ids(T, pad_mask, B)  # (B, T) on x's device
                n_seg = ceil_div(T, min(lengths))
            else:
                ids, n_seg = segment_ids.long(), num_ids
            scatter_backend = "scatter" if backend == "auto" else backend
            seg_max = segment_max(seg, ids, n_seg, scatter_backend)  # (B, n_seg, D)
            del seg
            s = torch.gather(seg_max, 1, ids.unsqueeze(-1).expand(B, T, D)).add_(g)  # (B, T, D): g + s_i
            gate = self.gate_proj(x)  # (B, T, D)
            y = torch.addcmul(local, s, gate)  # (B, T, D)
        del local, gate

        if pad_mask is not None:
            y.masked_fill_(~pad_mask.unsqueeze(-1), 0.0)  # (B, T, D), padded rows exactly 0
        out = self.out_proj(y)  # (B, T, D)
        return zero_padded(out, mask)

    @staticmethod
    def _fuse_uniform(
        local: torch.Tensor, g: torch.Tensor, seg_max: torch.Tensor, gate: torch.Tensor, seg_len: int
    ) -> torch.Tensor:
        """y = (g + s) * G + l with s broadcast from one row per segment (never a (B, T, D) copy).

        Full segments run on (B, T // L, L, D) views; a shorter last segment on its own.
        """
        B, T, D = local.shape
        n_full = T // seg_len
        full = n_full * seg_len
        gs = g.unsqueeze(1) + seg_max.unsqueeze(2)  # (B, n_seg, 1, D)
        parts = []
        if n_full:
            head = torch.addcmul(
                local[:, :full].view(B, n_full, seg_len, D),
                gs[:, :n_full],
                gate[:, :full].view(B, n_full, seg_len, D),
            )  # (B, T // L, L, D)
            parts.append(head.view(B, full, D))
        if full < T:
            parts.append(torch.addcmul(local[:, full:], gs[:, n_full], gate[:, full:]))  # (B, T - full, D)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, T, D)

    @staticmethod
    def _global_aggregation(
        q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, H: int, P: int
    ) -> torch.Tensor:
        """g = softmax(mean_real(Q) K^T / sqrt(P)) K per head, in at least fp32 -> (B, 1, D)."""
        B, T, D = q.shape
        dt = torch.promote_types(q.dtype, torch.float32)
        q, k = q.to(dt), k.to(dt)
        if mask is None:
            q_mean = q.mean(dim=1, keepdim=True)  # (B, 1, D)
        else:
            weights = mask.to(dt).unsqueeze(1)  # (B, 1, T)
            q_mean = torch.matmul(weights, q) / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (B, 1, D)
        # Block-diagonal (D, H) matrix per batch row, so all heads' scores come from one matmul
        # over the strided key view: column h holds head h's mean query in rows h*P .. h*P+P-1.
        eye = torch.eye(H, dtype=dt, device=q.device)  # (H, H)
        blocks = (q_mean.view(B, H, P, 1) * eye.view(1, H, 1, H)).reshape(B, D, H)  # (B, D, H)
        scores = torch.matmul(k, blocks * (1.0 / math.sqrt(P)))  # (B, T, H)
        if mask is not None:
            scores = scores.masked_fill(~safe_key_mask(mask).unsqueeze(-1), neg_value(dt))  # (B, T, H)
        probs = torch.softmax(scores, dim=1)  # (B, T, H)
        pooled = torch.matmul(probs.transpose(1, 2), k)  # (B, H, D): every head's weights on every channel
        # keep head h's weights on head h's channels: the (h, h) blocks
        g = pooled.view(B, H, H, P).diagonal(dim1=1, dim2=2)  # (B, P, H)
        return g.transpose(1, 2).reshape(B, 1, D)  # (B, 1, D)

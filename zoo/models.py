"""An LRA-style text classifier around any registered mixer (the profiler's ``--scope model``).

    from zoo.models import Encoder
    model = Encoder(mixer="ponet", depth=2, dim=64, heads=2, vocab=512, classes=2, ffn=128,
                    dropout=0.1, attention_dropout=0.1)
    logits = model(tokens, mask)              # tokens (B, T) int64, mask bool (B, T) -> (B, classes)
    loss = model.loss(tokens, labels, mask)   # mean cross-entropy

Token embedding plus learned absolute positions (then dropout), ``depth`` pre-norm blocks
``h = h + Drop(mixer(LN(h))); h = h + FFN(LN(h))`` (FFN = Linear, GELU, Drop, Linear, Drop), a
final LayerNorm, a mean over real tokens and a linear classifier. This is the setting of the LRA
text task and of the PoNet paper's consumption table (2 layers, d = 64, 2 heads of 32, FFN 128,
``dropout=0.1``, ``attention_dropout=0.1``), with the dropout placement of the LRA code
(lxchtan/PoNet ``examples/LRA/code/model.py``). ``attention_dropout`` goes to mixers whose config
has that field (those with attention weights: ``softmax``, ``linformer``, ...); a mixer without it
(``fnet``, ``ponet``, kernel methods) is built as is and ``attention_dropout_applied`` says so,
as the LRA code applies attention dropout only inside softmax attention. Dropout is active in
``train()`` mode only; with both at 0 (the default) the model is deterministic.

``head="token"`` replaces the mean-pool classifier by a per-token one: logits (B, T, classes), and
``loss`` takes labels (B, T) with -100 at positions that are not scored (token-level tasks such as
associative recall). A length-reducing mixer cannot give one output per input token: it raises.

``token_shift=True`` (off by default; ``zoo quality`` turns it on) adds to each token's embedding a
learned linear map of the *previous* token's embedding, ``e_t + W e_{t-1}`` (zero before the first
token and for padded previous tokens): a causal convolution of width 2 on the embeddings, RWKV's
"token shift", the "smeared keys" of Olsson et al. 2022 (arXiv 2209.11895). With it a single
mixing layer can match a query token against "the token before me" and so do associative recall;
without it that needs two layers (an induction head), which learned absolute positions make slow
to form. It reads only positions <= t, so a bidirectional mixer sees nothing it would not see anyway.

A mixer with ``spec.reduces_length`` (e.g. Pyramidion) returns fewer tokens than it reads: its
block has no residual around the mixer (the shapes differ) and the pooled keep-mask from
``forward_with_mask`` is carried to the following blocks and to the mean-pool.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.base import check_positive_int
from zoo.errors import ZooTypeError, ZooValueError
from zoo.registry import create_mixer, get_mixer_class

__all__ = ["Encoder", "EncoderBlock"]


class EncoderBlock(nn.Module):
    """Pre-norm block: ``h + mixer(LN(h))`` then ``h + FFN(LN(h))``."""

    def __init__(self, mixer: nn.Module, dim: int, ffn: int, *, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **kw)
        self.mixer = mixer
        self.dropout = nn.Dropout(dropout)  # on the mixer's output, before the residual
        self.norm2 = nn.LayerNorm(dim, **kw)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn, **kw), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim, **kw), nn.Dropout(dropout)
        )

    def forward(
        self, h: torch.Tensor, mask: torch.Tensor | None, causal: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.norm1(h)  # (B, T, D)
        y, mask = self.mixer.forward_with_mask(z, mask, causal=causal)  # (B, T', D), (B, T')
        y = self.dropout(y)
        # a length reducer's output has no residual partner (the shapes differ)
        h = y if self.mixer.spec.reduces_length else h + y  # (B, T', D)
        h = h + self.ffn(self.norm2(h))  # (B, T, D)
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)  # padded rows stay exactly zero
        return h, mask


class Encoder(nn.Module):
    """Embedding + learned positions, ``depth`` pre-norm blocks, mean-pool classifier."""

    def __init__(
        self,
        mixer: str = "ponet",
        depth: int = 2,
        dim: int = 64,
        heads: int = 2,
        vocab: int = 512,
        classes: int = 2,
        ffn: int = 128,
        max_len: int = 4096,
        mixer_overrides: dict[str, Any] | None = None,
        *,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        head: str = "pool",
        token_shift: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (("depth", depth), ("vocab", vocab), ("classes", classes), ("ffn", ffn), ("max_len", max_len)):
            check_positive_int(f"Encoder: {name}", value)
        for name, value in (("dropout", dropout), ("attention_dropout", attention_dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ZooValueError(f"Encoder: {name}: expected a probability in [0, 1), got {value!r}")
        if not isinstance(token_shift, bool):
            raise ZooTypeError(f"Encoder: token_shift: expected True or False, got {token_shift!r}")
        if head not in ("pool", "token"):
            raise ZooValueError(f"Encoder: head: expected 'pool' or 'token', got {head!r}")
        overrides = dict(mixer_overrides or {})
        for key in ("dim", "heads"):
            if key in overrides:
                raise ZooValueError(f"Encoder: mixer_overrides: expected no {key!r} (pass {key}= to Encoder), got {overrides[key]!r}")
        has_field = "attention_dropout" in {f.name for f in dataclasses.fields(get_mixer_class(mixer).Config)}
        if attention_dropout and overrides.get("attention_dropout", attention_dropout) not in (0, attention_dropout):
            raise ZooValueError(
                f"Encoder: attention_dropout: given twice with different values ({attention_dropout} and "
                f"mixer_overrides {overrides['attention_dropout']}); pass it once"
            )
        if attention_dropout and has_field:
            overrides["attention_dropout"] = attention_dropout
        # True when the mixers drop attention weights in training (False: no such field, or p = 0)
        self.attention_dropout_applied = bool(has_field and overrides.get("attention_dropout", 0.0))
        self.dropout = dropout
        kw = {"device": device, "dtype": dtype}
        self.mixer_name = mixer
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab, dim, **kw)
        self.position_embedding = nn.Embedding(max_len, dim, **kw)
        # W of e_t + W e_{t-1}; None when off (the default: the profiler's model has no such layer)
        self.token_shift = nn.Linear(dim, dim, bias=False, **kw) if token_shift else None
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(create_mixer(mixer, dim=dim, heads=heads, **overrides, **kw), dim, ffn, dropout=dropout, **kw)
            for _ in range(depth)
        )
        if head == "token" and any(b.mixer.spec.reduces_length for b in self.blocks):
            raise ZooValueError(f"Encoder: head: 'token' needs one output per token; {mixer!r} reduces the length")
        self.head = head
        self.norm = nn.LayerNorm(dim, **kw)
        self.classifier = nn.Linear(dim, classes, **kw)
        if device != "meta":
            with torch.no_grad():
                nn.init.normal_(self.token_embedding.weight, std=0.02)
                nn.init.normal_(self.position_embedding.weight, std=0.02)

    def lengths(self, T: int) -> list[int]:
        """Sequence length entering each block (differs only after a length-reducing mixer)."""
        out = []
        for block in self.blocks:
            out.append(T)
            T = block.mixer.out_len(T)
        return out

    @staticmethod
    def _previous(e: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``e`` moved one position later: row t holds e_{t-1}; zeros at t = 0 and where t-1 is padding."""
        prev = F.pad(e, (0, 0, 1, 0))[:, :-1]  # (B, T, D)
        if mask is not None:
            keep = F.pad(mask.to(e.dtype), (1, 0))[:, :-1]  # (B, T): 1 where t-1 is a real token
            prev = prev * keep.unsqueeze(-1)  # (B, T, D)
        return prev

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ZooTypeError(f"Encoder: tokens: expected an int64 tensor of shape (B, T), got {got}")
        B, T = tokens.shape
        if T > self.max_len:
            raise ZooValueError(f"Encoder: tokens: expected T <= max_len={self.max_len}, got T={T}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, T)):
            raise ZooValueError(f"Encoder: mask: expected a bool tensor of shape ({B}, {T}), got {mask.dtype} {tuple(mask.shape)}")
        positions = torch.arange(T, device=tokens.device)  # (T,)
        e = self.token_embedding(tokens)  # (B, T, D)
        if self.token_shift is not None:
            e = e + self.token_shift(self._previous(e, mask))  # (B, T, D)
        h = self.embedding_dropout(e + self.position_embedding(positions))  # (B, T, D)
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        for block in self.blocks:
            h, mask = block(h, mask, causal)  # (B, T_l, D)
        h = self.norm(h)  # (B, T_l, D)
        if self.head == "token":
            return self.classifier(h)  # (B, T, classes)
        if mask is None:
            pooled = h.mean(dim=1)  # (B, D)
        else:
            w = mask.to(h.dtype).unsqueeze(-1)  # (B, T_l, 1)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, D)
        return self.classifier(pooled)  # (B, classes)

    def loss(
        self, tokens: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False
    ) -> torch.Tensor:
        """Mean cross-entropy of the classifier (computed in fp32); token head: over labels != -100."""
        logits = self(tokens, mask, causal=causal)  # (B, classes) or (B, T, classes)
        if self.head == "token":
            return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)  # (B*T, C)
        return F.cross_entropy(logits.float(), labels)

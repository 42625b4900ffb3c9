"""The recurrent-state API shared by every causal mixer: the state object and its cache helpers.

A causal mixer generates token by token through three methods on :class:`zoo.base.TokenMixer`::

    state = m.init_state(batch, device=None, dtype=None)
    y, state = m.prefill(x, state, mask=None)          # a prompt (B, T, D), consumed in chunks
    y_t, state = m.step(x_t, state, mask=None)         # one new token, x_t (B, 1, D)

and the outputs equal ``m(x, mask, causal=True)`` on the concatenated sequence. A mixer
implements two hooks, ``_state_tensors(batch, device, dtype) -> dict`` (the empty state) and
``_advance(x, mask, state) -> y`` (consume a chunk of n >= 1 tokens that start at
``state.position``, update ``state.tensors`` and return the chunk's outputs); the base checks
inputs, cuts the prompt into chunks and advances ``state.position``. ``_advance`` replaces the
tensors it updates (never changes one in place, except writing cache slots past the current
position), so :meth:`MixerState.snapshot` / :meth:`MixerState.restore` roll a state back for free.

Mask semantics (one rule for every mixer): ``mask`` is bool (B, n), True = real token, exactly
as in ``forward``. A padded token adds nothing to the state's content (no key, value or
recurrent update; its output row is zero) but still advances the position counter, so left- or
right-padded prompts give the same outputs at real positions as the parallel forward on the same
padded sequence (positions, windows and blocks count padded slots, as ``forward`` does). A cache
may hold a padded slot as a masked entry (it then costs memory but is never attended to).

The size of a mixer's state as a function of the context length T is declared in its spec
(``spec.state``, a :class:`StateSize`): constant, O(w) (a window, block or chunk of fixed
size) or O(T) (a KV cache, or the whole input history).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "StateSize",
    "MixerState",
    "append_time",
    "keep_last",
    "state_bytes",
    "causal_allowed",
    "cached_attention",
    "block_segments",
]


class StateSize(str, enum.Enum):
    """How the memory held by a mixer's generation state grows with the context length T."""

    CONSTANT = "O(1)"  # recurrent state: bytes independent of T
    WINDOW = "O(w)"  # a window / block of fixed size: bounded in T
    LINEAR = "O(T)"  # a KV cache or the input history: grows with T

    @property
    def exponent(self) -> float:
        """Exponent of state bytes in T at long contexts (what a log-log fit should find)."""
        return {"O(1)": 0.0, "O(w)": 0.0, "O(T)": 1.0}[self.value]

    def __str__(self) -> str:
        return self.value


@dataclass
class MixerState:
    """A causal mixer's generation state: plain tensors plus the tokens consumed so far.

    ``tensors`` are updated in place by ``prefill``/``step`` (call them under ``torch.no_grad()``
    or ``torch.inference_mode()``); ``position`` counts every consumed token, padded ones too.
    """

    mixer: str  # registry name of the mixer that made it
    batch: int
    device: torch.device
    dtype: torch.dtype
    position: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of memory held by the state's tensors (each storage counted once)."""
        return state_bytes(self.tensors)

    def snapshot(self) -> tuple[int, dict[str, torch.Tensor]]:
        """What :meth:`restore` needs to undo later calls: the position and the tensor dict.

        Cheap (no copy) because ``_advance`` never changes a tensor of the state in place, except
        to write cache slots past the current position (which the restored position ignores).
        """
        return self.position, dict(self.tensors)

    def restore(self, snap: tuple[int, dict[str, torch.Tensor]]) -> None:
        """Roll back to a :meth:`snapshot` (the profiler times decode steps at a fixed context)."""
        self.position, tensors = snap
        self.tensors = dict(tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.tensors.items())
        return f"MixerState({self.mixer}, batch={self.batch}, position={self.position}, {shapes})"


def state_bytes(tensors: dict[str, Any]) -> int:
    """Bytes held by the tensors' storages (shared storages counted once)."""
    seen: dict[int, int] = {}
    for t in tensors.values():
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
    return sum(seen.values())


def append_time(buf: torch.Tensor, new: torch.Tensor, length: int, axis: int) -> torch.Tensor:
    """Write ``new`` after the first ``length`` entries of ``buf`` along ``axis`` (a growable
    cache): returns ``buf`` itself when it has room, else a buffer of doubled capacity holding
    the old entries. The caller slices ``[:length + n]`` to read it."""
    n = new.shape[axis]
    cap = buf.shape[axis]
    if length + n > cap:
        shape = list(buf.shape)
        shape[axis] = max(length + n, 2 * cap)
        grown = buf.new_zeros(shape)
        grown.narrow(axis, 0, length).copy_(buf.narrow(axis, 0, length))
        buf = grown
    buf.narrow(axis, length, n).copy_(new)
    return buf


def keep_last(buf: torch.Tensor, new: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """A sliding window buffer: ``buf`` followed by ``new`` along ``axis``, cut to the last
    ``size`` entries (the state of a window of fixed size; older entries are dropped)."""
    out = torch.cat([buf, new], dim=axis)
    start = max(out.shape[axis] - size, 0)
    return out.narrow(axis, start, out.shape[axis] - start).clone() if start else out


def causal_allowed(keys: torch.Tensor, q_start: int, k_start: int, n: int) -> torch.Tensor:
    """(B, n, L) bool: query q_start + i may use key k_start + j when the key is real and not in
    its future; a query always sees itself, so no row is empty (a padded query stays finite and
    is zeroed afterwards), as the causal forward's masks do. keys: (B, L) bool."""
    L = keys.shape[1]
    qpos = torch.arange(q_start, q_start + n, device=keys.device)[:, None]  # (n, 1)
    kpos = torch.arange(k_start, k_start + L, device=keys.device)[None, :]  # (1, L)
    return (keys[:, None, :] & (kpos <= qpos)) | (kpos == qpos)  # (B, n, L)


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, offset: int
) -> torch.Tensor:
    """Causal softmax attention of n new queries over a cache (fused SDPA on the cache).

    q (B, H, n, P) at cache positions offset .. offset + n - 1; k, v (B, H, L, P) the whole cache
    (the new tokens included, L = offset + n); keys (B, L) bool, True = real key. -> (B, H, n, P).
    """
    allowed = causal_allowed(keys, offset, 0, q.shape[2])  # (B, n, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # (B, H, n, P)


def block_segments(position: int, n: int, block: int) -> list[tuple[int, int, int]]:
    """Cut n tokens starting at absolute ``position`` at multiples of ``block``:
    [(start, stop, offset in its block)] in chunk coordinates."""
    out, s = [], 0
    while s < n:
        r = (position + s) % block
        e = min(n, s + block - r)
        out.append((s, e, r))
        s = e
    return out

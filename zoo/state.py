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

from zoo.scan import masked_exp

__all__ = [
    "StateSize",
    "MixerState",
    "append_time",
    "grown_capacity",
    "keep_last",
    "state_bytes",
    "causal_allowed",
    "cached_attention",
    "block_segments",
    "conv_with_tail",
    "decayed_attention_step",
    "delta_rule_step",
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


def grown_capacity(cap: int, needed: int) -> int:
    """The capacity a growable cache of ``cap`` slots takes when it needs ``needed``: 1/8 more (at
    least one slot), or ``needed`` if that is more."""
    return max(needed, cap + max(cap // 8, 1))


def append_time(buf: torch.Tensor, new: torch.Tensor, length: int, axis: int) -> torch.Tensor:
    """Write ``new`` after the first ``length`` entries of ``buf`` along ``axis`` (a growable
    cache): returns ``buf`` itself when it has room, else a larger buffer holding the old entries.
    Capacity grows by 1/8 (at least 1): a step copies 8 cache rows per new token on average,
    little next to attending over all of them, and the memory held stays within 1.125x of what is
    used. The caller slices ``[:length + n]`` to read it."""
    n = new.shape[axis]
    cap = buf.shape[axis]
    if length + n > cap:
        shape = list(buf.shape)
        shape[axis] = grown_capacity(cap, length + n)
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


def conv_with_tail(tail: torch.Tensor, u: torch.Tensor, conv) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal depthwise conv over a chunk u (B, n, C) that continues a sequence whose last
    taps - 1 inputs are ``tail`` (B, taps - 1, C): (outputs (B, n, C), the new tail).

    ``conv`` is the mixer's own causal conv of a (B, L, C) sequence (zeros before its start); run
    on tail + chunk, its last n outputs read only real inputs, so they equal the full sequence's.
    """
    full = torch.cat([tail, u], dim=1)  # (B, taps - 1 + n, C)
    return conv(full)[:, -u.shape[1] :], full[:, full.shape[1] - tail.shape[1] :]


def decayed_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor, S: torch.Tensor, piece: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal decayed linear attention continuing from state S: ``S_t = diag(g_t) S_{t-1} +
    k_t^T v_t``, ``o_t = q_t S_t``, over n new tokens, ``piece`` tokens at a time.

    q, k (B, H or 1, n, K); v (B, H, n, V); log_g (B, H, n) (a scalar per head) or (B, H, n, K)
    (per key channel), <= 0; S (B, H, K, V). Returns (o (B, H, n, V), the new S). Every exponent
    taken is <= 0.
    """
    outs = []
    for s in range(0, v.shape[2], piece):
        qs, ks, vs, gs = q[:, :, s : s + piece], k[:, :, s : s + piece], v[:, :, s : s + piece], log_g[:, :, s : s + piece]
        m = vs.shape[2]
        future = torch.ones(m, m, dtype=torch.bool, device=v.device).triu(1)  # [i, j]: j > i
        G = gs.cumsum(2)  # (B, H, m) or (B, H, m, K): log decay from the piece's start, inclusive
        if G.dim() == 3:  # scalar decay: an m x m matrix of decays
            decay = masked_exp(G[..., :, None] - G[..., None, :], future)  # (B, H, m, m)
            scores = torch.matmul(qs, ks.transpose(-1, -2)) * decay  # (B, H, m, m)
            G_end, G = G[..., -1:, None], G[..., None]  # (B, H, 1, 1), (B, H, m, 1)
            carry = G_end.exp()  # (B, H, 1, 1): the state's decay over the piece
        else:  # per-channel decay: the m x m x K decays
            gap = masked_exp(G[:, :, :, None, :] - G[:, :, None, :, :], future[..., None])  # (B, H, m, m, K)
            scores = torch.einsum("bhik,bhjk,bhijk->bhij", qs, ks, gap)  # (B, H, m, m)
            G_end = G[:, :, -1:]  # (B, H, 1, K)
            carry = G_end.exp().transpose(-1, -2)  # (B, H, K, 1)
        o = torch.matmul(scores, vs) + torch.matmul(qs * G.exp(), S)  # (B, H, m, V)
        S = S * carry + torch.matmul((ks * (G_end - G).exp()).transpose(-1, -2), vs)  # (B, H, K, V)
        outs.append(o)
    return torch.cat(outs, dim=2), S


def delta_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
    S: torch.Tensor, chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule continuing from state S, ``chunk`` tokens at a time (WY form):
    ``S_t = exp(g_t) S_{t-1} + beta_t k_t^T (v_t - exp(g_t) k_t S_{t-1})``, ``o_t = q_t S_t``.

    q (already scaled), k (B, H, n, K); v (B, H, n, V); beta (B, H, n); g (B, H, n) log decay or
    None; S (B, H, K, V). Returns (o (B, H, n, V), the new S).
    """
    outs = []
    for s in range(0, v.shape[2], chunk):
        qc, kc, vc = q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk]
        bc = beta[:, :, s : s + chunk, None]  # (B, H, m, 1)
        m = vc.shape[2]
        future = torch.ones(m, m, dtype=torch.bool, device=v.device).triu(1)  # j > i
        kk = torch.matmul(kc, kc.transpose(-1, -2))  # (B, H, m, m)
        qk = torch.matmul(qc, kc.transpose(-1, -2))  # (B, H, m, m)
        kw, k_end, q_in, carry = kc, kc, qc, None
        if g is not None:
            G = g[:, :, s : s + chunk].cumsum(-1)  # (B, H, m)
            gamma = masked_exp(G[..., :, None] - G[..., None, :], future)  # (B, H, m, m)
            kk, qk = kk * gamma, qk * gamma
            kw, q_in = kc * G.exp()[..., None], qc * G.exp()[..., None]  # seen from the piece's start
            k_end = kc * (G[..., -1:] - G).exp()[..., None]  # seen from the piece's end
            carry = G[..., -1:].exp()[..., None]  # (B, H, 1, 1)
        system = (kk * bc).tril(-1) + torch.eye(m, dtype=v.dtype, device=v.device)  # (B, H, m, m): I + strictly lower
        uw = torch.linalg.solve_triangular(system, torch.cat([vc, kw], dim=-1) * bc, upper=False,
                                           unitriangular=True)  # (B, H, m, V + K)
        u, w = uw.split([vc.shape[-1], kc.shape[-1]], dim=-1)
        new = u - torch.matmul(w, S)  # (B, H, m, V): corrected values
        outs.append(torch.matmul(q_in, S) + torch.matmul(qk.masked_fill(future, 0.0), new))  # (B, H, m, V)
        S = (S if carry is None else S * carry) + torch.matmul(k_end.transpose(-1, -2), new)  # (B, H, K, V)
    return torch.cat(outs, dim=2), S

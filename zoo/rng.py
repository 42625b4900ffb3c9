"""Counter-based random numbers on the input's device (skeinformer, bigbird).

A draw is a pure function of a 64-bit key and integer counters (splitmix64): no generator state
crosses the host, so a forward pass has no host sync or host-to-device copy, and the same key
gives the same numbers on every device and batch composition. Keys come from a 0-d int64 state
buffer (:func:`next_key`, a splitmix64 stream) or are fixed per seed (:func:`fixed_key`).
"""

from __future__ import annotations

import torch

__all__ = ["counter_uniform", "fixed_key", "next_key", "stream_start"]

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # int64 views of the splitmix64 constants
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def _wrap64(x: int) -> int:
    """A Python int reduced to the signed int64 range (two's complement)."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _mix64_int(x: int) -> int:
    """:func:`_mix64` on a Python int (host side, for constants)."""
    x &= (1 << 64) - 1
    x = ((x ^ (x >> 30)) * (_MIX1 & ((1 << 64) - 1))) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * (_MIX2 & ((1 << 64) - 1))) & ((1 << 64) - 1)
    return _wrap64(x ^ (x >> 31))


# The hash relies on wrapping int64 arithmetic, which inductor does not preserve (it folds
# ``arange * GOLDEN`` into index expressions: an OverflowError for a Python-int constant, silently
# wrong draws otherwise). Custom ops keep it opaque: torch.compile calls the eager kernels, with no
# graph break, and fake tensors (the profiler's prediction) only see the output shapes.


@torch.library.custom_op("zoo::counter_uniform", mutates_args=())
def _counter_uniform_op(key: torch.Tensor, lane: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    base = _mix64(key + lane * _GOLDEN)
    x = _mix64(base + (index + 1) * _GOLDEN)
    return (_shift_right(x, 11).to(torch.float64) + 0.5) * 2.0**-53


@_counter_uniform_op.register_fake
def _(key, lane, index):
    return lane.new_empty(torch.broadcast_shapes(key.shape, lane.shape, index.shape), dtype=torch.float64)


@torch.library.custom_op("zoo::splitmix_next", mutates_args=())
def _splitmix_next_op(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One splitmix64 step: (state + GOLDEN, mix64(state + GOLDEN))."""
    nxt = state + _GOLDEN
    return nxt, _mix64(nxt)


@_splitmix_next_op.register_fake
def _(state):
    return torch.empty_like(state), torch.empty_like(state)


def counter_uniform(key: int | torch.Tensor, lane: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Uniform(0, 1) float64 for every (lane, index) pair (broadcast), a pure function of ``key``.

    ``key``: a Python int or a 0-d int64 tensor on lane's device (no host round trip).
    """
    if not isinstance(key, torch.Tensor):
        key = torch.full((), _wrap64(key), dtype=torch.int64, device=lane.device)
    return _counter_uniform_op(key, lane, index)


def fixed_key(seed: int) -> int:
    """The fixed (eval) 64-bit key of ``seed``, as a Python int."""
    return _mix64_int(seed + 0x5EED)


def stream_start(seed: int) -> int:
    """Initial splitmix64 state of the training stream seeded by ``seed``."""
    return _mix64_int(seed)


def next_key(state: torch.Tensor) -> torch.Tensor:
    """Advance a 0-d int64 splitmix64 ``state`` buffer in place; returns this call's 0-d key.

    Stays on the state's device (no host sync); compiles without a graph break.
    """
    nxt, key = _splitmix_next_op(state)
    with torch.no_grad():
        state.copy_(nxt)
    return key

"""FLOPs of a callable by torch's counter, with the formulas torch lacks, and the SDPA backend name.

Added to ``FlopCounterMode`` (:func:`extra_flop_formulas`):

* FFTs: the usual radix-2 count, 5 N log2 N per complex length-N transform (over the transformed
  dims jointly), half that for real-input or real-output transforms.
* SDPA with ``is_causal``: torch counts every fused SDPA op (CPU flash, CUDA flash, efficient,
  cuDNN; forward and backward) as full attention whatever ``is_causal`` says; a causal call does
  half the score/value products, so these formulas halve the count. The CPU flash op, which torch
  does not count at all, is counted as the CUDA ones (2 matmuls forward, 5 backward).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

__all__ = ["extra_flop_formulas", "count_flops", "flop_counter", "flop_registry", "FlopTally", "SDPA_BACKENDS",
           "sdpa_backend", "SDPA_CAUSAL_ARG", "SdpaRecorder"]

SDPA_BACKENDS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}

# op name -> (position of is_causal in the op's schema, backward?)
SDPA_CAUSAL_ARG = {
    "_scaled_dot_product_flash_attention_for_cpu": (4, False),
    "_scaled_dot_product_flash_attention_for_cpu_backward": (7, True),
    "_scaled_dot_product_flash_attention": (4, False),
    "_scaled_dot_product_flash_attention_backward": (11, True),
    "_scaled_dot_product_efficient_attention": (6, False),
    "_scaled_dot_product_efficient_attention_backward": (11, True),
    "_scaled_dot_product_cudnn_attention": (6, False),
    "_scaled_dot_product_cudnn_attention_backward": (14, True),
}


def sdpa_backend(ops: set[str] | list[str]) -> str | None:
    """"flash", "efficient", ... from the SDPA op names a call dispatched (None: no fused SDPA)."""
    names = sorted({SDPA_BACKENDS[o] for o in ops if o in SDPA_BACKENDS})
    return ",".join(names) or None


def _fft_flops(numel: int, shape: tuple, dims, factor: float) -> int:
    n = 1
    for d in dims:
        n *= int(shape[d])
    return int(factor * numel * math.log2(n)) if n > 1 else 0


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _sdpa_formula(position: int, backward: bool) -> Callable[..., int]:
    """A counter formula (tensors arrive as shapes) reading ``is_causal`` at ``position``."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def formula(*args, out_shape=None, **kwargs) -> int:
        causal = kwargs.get("is_causal", args[position] if len(args) > position else False)
        flops = sdpa_backward_flop_count(*args[:4]) if backward else sdpa_flop_count(*args[:3])
        return flops // 2 if causal else flops

    return formula


def extra_flop_formulas() -> dict:
    """``FlopCounterMode(custom_mapping=...)`` entries (see the module docstring)."""
    aten = torch.ops.aten

    def r2c(self_shape, dim, *args, out_shape=None, **kwargs):
        return _fft_flops(_prod(self_shape), self_shape, dim, 2.5)

    def c2c(self_shape, dim, *args, out_shape=None, **kwargs):
        return _fft_flops(_prod(self_shape), self_shape, dim, 5.0)

    def c2r(self_shape, dim, *args, out_shape=None, **kwargs):
        return _fft_flops(_prod(out_shape), out_shape, dim, 2.5)

    table: dict[Any, Callable] = {aten._fft_r2c: r2c, aten._fft_c2c: c2c, aten._fft_c2r: c2r}
    for name, (position, backward) in SDPA_CAUSAL_ARG.items():
        op = getattr(aten, name, None)
        if op is not None:
            table[op] = _sdpa_formula(position, backward)
    return table


def flop_counter():
    """A quiet ``FlopCounterMode`` with :func:`extra_flop_formulas`."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())


@functools.lru_cache(maxsize=1)
def flop_registry() -> dict:
    """torch's FLOP formulas plus :func:`extra_flop_formulas`, by op overload packet (what
    :func:`flop_counter` counts with), built once."""
    return dict(flop_counter().flop_registry)


class FlopTally:
    """The FLOPs of the ops handed to :meth:`count` by :func:`flop_registry`'s formulas: the count
    ``FlopCounterMode`` gives, without a dispatch mode of its own (it rides on another mode's
    dispatch, :class:`profiler.memory.CountingTracker`: a fake pass's cost is per-op dispatch)."""

    def __init__(self) -> None:
        self.registry = flop_registry()
        self.flops = 0.0

    def count(self, func, args, kwargs, out) -> None:
        formula = self.registry.get(func.overloadpacket)
        if formula is not None:
            self.flops += float(formula(*args, **kwargs, out_val=out))


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` by torch's counter plus :func:`extra_flop_formulas`."""
    counter = flop_counter()
    with counter:
        fn()
    return float(counter.get_total_flops())


class SdpaRecorder:
    """Records the fused SDPA ops a call dispatches (its backend), computing nothing extra.

    A context manager wrapping a ``TorchDispatchMode``; ``ops`` holds the op names seen."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops: set[str] = set()

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if "scaled_dot_product" in name:
                    ops.add(name)
                return func(*args, **(kwargs or {}))

        self.ops = ops
        self._mode = _Mode()

    def __enter__(self) -> "SdpaRecorder":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

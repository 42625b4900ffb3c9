"""One table of tolerances, keyed by dtype, for every comparison in the suite."""

import torch

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
}


def tol(dtype: torch.dtype) -> dict:
    return TOL[dtype]


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in fp64 (a low-precision result against its fp32 counterpart)."""
    y, ref = y.detach().double(), ref.detach().double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


# a bf16 result (autocast or a bf16 module) against fp32: relative error of the whole tensor
BF16_REL = TOL[torch.bfloat16]["rtol"]
# mixers with spec.precision_sensitive (a top-k that flips): same scale, not round-off
FLIP_REL = 0.9

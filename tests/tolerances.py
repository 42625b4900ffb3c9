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

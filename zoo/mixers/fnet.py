"""FNet: token mixing by the real part of a 2D discrete Fourier transform, no parameters.

Paper
    Lee-Thorp, Ainslie, Eckstein, Ontañón, "FNet: Mixing Tokens with Fourier Transforms",
    NAACL 2022, arXiv 2105.03824. References: google-research/f_net, transformers' ``modeling_fnet``.

Mechanism
    For each sequence X (T x D), ``out = Re(F_T X F_D)`` with F_N the unnormalised DFT matrix:
    an FFT along the channels and one along the tokens, real part kept; no parameters and no
    heads. The input is real, so the zoo computes only half the spectrum (``rfft2``: a real FFT
    along D, then a complex FFT along T on D//2 + 1 columns) and fills the other half from the
    Hermitian symmetry ``Re Y[t, k] = Re Y[-t mod T, -k mod D]``: half the FFT work of ``fftn``,
    same numbers. The map is self-adjoint, so the backward pass is the same transform of the
    gradient. It runs in at least fp32 (also under autocast: the documented internal upcast) and
    the result is cast back to x's dtype, or to autocast's dtype when autocast is on.
    ``norm="ortho"`` divides by sqrt(T·D).

Deviations
    * Padding: the paper and its code take no mask. The zoo zeroes padded input rows before the
      transform (pad values do not matter) and zeroes padded output rows (C2); outputs still
      depend on the padded length T (no padding invariance, ``spec.key_padding_mask=False``).
    * ``norm="ortho"`` (divide by sqrt(T·D)) is a zoo option, not the paper's; the default
      ``"backward"`` is the paper's unnormalised transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import (
    Complexity,
    MixerConfig,
    MixerSpec,
    TokenMixer,
    cfg,
    check_choice,
    check_inputs,
    log2,
    output_dtype,
    zero_padded,
)
from zoo.registry import register

NORMS = ("backward", "ortho")


@dataclass(frozen=True)
class FNetConfig(MixerConfig):
    norm: str = cfg("backward", "DFT scaling: backward (unnormalised, the paper's) | ortho (divide by sqrt(T*D))")

    def validate(self) -> None:
        check_choice("norm", self.norm, NORMS)

    @classmethod
    def tiny(cls) -> "FNetConfig":
        return cls(dim=16, heads=2)


def fnet_flops(c: FNetConfig, B: int, T: int, causal: bool = False) -> float:
    # The usual FFT count for real input, 2.5·N·log2(N) per length-N transform, over both axes:
    # T·2.5·D·log2(D) + D·2.5·T·log2(T) = 2.5·T·D·log2(T·D) per sequence.
    return 2.5 * B * T * c.dim * log2(T * c.dim)


def real_fft2(x: torch.Tensor, norm: str = "backward") -> torch.Tensor:
    """Re(FFT2) over the last two axes of a real (..., T, D) tensor, from half the spectrum."""
    T, D = x.shape[-2:]
    h = D // 2
    half = torch.fft.rfft2(x, dim=(-2, -1), norm=norm).real  # (..., T, h + 1), a strided view
    out = x.new_empty(x.shape)  # (..., T, D)
    out[..., : h + 1] = half
    if D - h - 1 > 0:
        # column k > h mirrors column D - k (1 .. D - h - 1) at row (-t) mod T: row 0 stays, rows
        # 1 .. T-1 reverse, so the mirrored block is a flip of both axes (row 0: columns only)
        out[..., 0, h + 1 :] = half[..., 0, 1 : D - h].flip(-1)  # (..., D - h - 1)
        if T > 1:
            out[..., 1:, h + 1 :] = half[..., 1:, 1 : D - h].flip((-2, -1))  # (..., T - 1, D - h - 1)
    return out


class _RealFFT2(torch.autograd.Function):
    """x -> Re(F_T x F_D) is linear and self-adjoint (the DFT matrices are symmetric and x is
    real), so its backward is the same transform of the incoming gradient: one half-spectrum
    FFT instead of autograd's complex round trip."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, norm: str) -> torch.Tensor:
        ctx.norm = norm
        return real_fft2(x, norm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _RealFFT2.apply(grad.contiguous(), ctx.norm), None


@register
class FNetMixer(TokenMixer):
    spec = MixerSpec(
        name="fnet",
        title="FNet: Mixing Tokens with Fourier Transforms",
        arxiv="2105.03824",
        year=2022,
        time=Complexity.LOGLINEAR,
        memory=Complexity.LINEAR,
        flops=fnet_flops,
        cost_note=(
            "2.5·B·T·D·log2(T·D) FLOPs (real-input FFT count 2.5·N·log2 N per transform, both axes); "
            "no parameters; memory O(B·T·D) (half spectrum, complex)"
        ),
        causal=False,
        key_padding_mask=False,
        deviations=(
            "padded input rows zeroed before the transform and output rows after (the paper takes no "
            "mask; outputs depend on the padded length); norm='ortho' is a zoo option"
        ),
    )
    Config = FNetConfig

    def __init__(self, config: FNetConfig, *, device=None, dtype=None):
        super().__init__(config)
        # no parameters: an empty buffer carries the module's dtype/device (follows .to(), .half())
        # so that check_inputs can reject an input of another dtype, as for every other mixer
        self.register_buffer("dtype_anchor", torch.empty(0, device=device, dtype=dtype), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: must be False (no causal variant: True raises ValueError).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        z = x.to(torch.promote_types(x.dtype, torch.float32))  # (B, T, D), fp32 or fp64
        if mask is not None:
            z = z.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T, D): pad values must not matter
        # the transform runs in fp32 even under autocast; the result takes autocast's dtype there,
        # as the Linear-ended mixers' outputs do
        y = _RealFFT2.apply(z, self.config.norm).to(output_dtype(x))  # (B, T, D)
        return zero_padded(y, mask)

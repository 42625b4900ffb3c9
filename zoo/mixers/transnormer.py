"""TransNormer NormAttention: linear attention with a kernel feature map and an output RMSNorm.

Paper
    Qin, Han, Sun, Li, Kong, Barnes, Zhong, "The Devil in Linear Transformer", EMNLP 2022,
    arXiv 2210.10340. Code: OpenNLPLab/fairseq-evo (``norm_linear_attention.py``) and
    OpenNLPLab/lra.

Mechanism
    Per head, Qf = phi(Q) and Kf = phi(K) with phi = ELU (variant t1) or 1 + ELU (t2); with
    ``urpe=True`` both are then rotated by URPE, ``Rot_t(H z_t)`` (H = I - 2 u u^T with a unit
    vector u drawn once at init from ``seed`` and frozen; rotary angles t * theta_i with learned
    theta shared by the heads). The output is ``Qf (Kf^T V)`` (a p x p state per head), with no
    1/sqrt(p) scaling and no denominator: instead the merged output is normalised by
    SimpleRMSNorm, ``z / (||z|| / sqrt(D) + 1e-8)``, then projected by W_O. Causal mode computes
    ``Qf_t sum_{s<=t} Kf_s^T V_s`` by chunked prefix sums (``chunk_size`` tokens per chunk).
    ``transnormer_stack(depth, ...)`` builds the paper's language-model arrangement: DiagAttention
    (``transnormer_diag``) in the first half of the layers, NormAttention in the second.

    Precision: the sums over T (linear-attention state and normalisers) and the rotation run in
    at least fp32.

Deviations
    Padding: Kf and V are zeroed at padded positions before the sum, so real outputs do not depend
    on padding (the reference accepts the mask and ignores it; ``faithful_mask=True`` reproduces
    that). Causal: chunked prefix sums in O(T) memory, where the reference builds the masked
    T x T matrix. The output normalisation is SimpleRMSNorm as in the fairseq language models
    (the LRA code uses the model-wide norm, BatchNorm). The Householder vector is a seeded buffer
    (the reference draws it from the global RNG at construction). No attention dropout (none in
    the reference either).
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
    cfg,
    ceil_div,
    check_choice,
    check_inputs,
    check_positive_int,
    zero_padded,
)
from zoo.errors import ZooValueError
from zoo.functional import (
    causal_linear_attention,
    compute_dtype,
    householder_vector,
    linear_attention,
    linear_flops,
    merge_heads,
    rotary_frequencies,
    simple_rms_norm,
    split_heads,
    urpe,
)
from zoo.registry import register
from zoo.state import StateSize

VARIANTS = ("t1", "t2")


@dataclass(frozen=True)
class TransNormerConfig(MixerConfig):
    variant: str = cfg("t1", "t1: phi = ELU | t2: phi = 1 + ELU (kernel feature map)")
    urpe: bool = cfg(True, "unitary relative positional encoding (Householder + learned rotary) on Qf, Kf")
    chunk_size: int = cfg(64, "tokens per chunk of the causal prefix-sum computation")
    faithful_mask: bool = cfg(False, "ignore the padding mask in the mixing, as the reference does")
    seed: int = cfg(0, "seed of the Householder vector drawn at init (URPE)")

    def validate(self) -> None:
        check_choice("variant", self.variant, VARIANTS)
        check_choice("urpe", self.urpe, (True, False))
        check_positive_int("chunk_size", self.chunk_size)
        check_choice("faithful_mask", self.faithful_mask, (True, False))
        check_positive_int("seed", self.seed, minimum=0)
        if self.urpe and self.head_dim % 2:
            raise ZooValueError(
                f"transnormer: urpe: expected an even head width dim/heads for the rotary pairs, "
                f"got dim={self.dim}, heads={self.heads} (head width {self.head_dim})"
            )

    @classmethod
    def tiny(cls) -> "TransNormerConfig":
        return cls(dim=16, heads=2, chunk_size=4)


def transnormer_flops(c: TransNormerConfig, B: int, T: int, causal: bool = False) -> float:
    proj = linear_flops(B, T, c.dim, c.dim, count=4)
    P = c.head_dim
    if not causal:
        return proj + 4.0 * B * T * c.dim * P  # Kf^T V and Qf (Kf^T V): 2 * (2 B H T P^2)
    Tp = ceil_div(T, c.chunk_size) * c.chunk_size
    # intra-chunk scores and scores @ V: 2 * (2 B H Tp c P); chunk states and Qf @ prefix: 2 * (2 B H Tp P^2)
    return proj + 4.0 * B * Tp * c.dim * c.chunk_size + 4.0 * B * Tp * c.dim * P


def feature_map(z: torch.Tensor, variant: str) -> torch.Tensor:
    """phi: ELU (t1) or 1 + ELU (t2), elementwise."""
    return F.elu(z) if variant == "t1" else 1.0 + F.elu(z)


@register
class TransNormerMixer(TokenMixer):
    spec = MixerSpec(
        name="transnormer",
        title="The Devil in Linear Transformer",
        arxiv="2210.10340",
        year=2022,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=transnormer_flops,
        cost_note=(
            "O(T·p·D) time, p = head width (Kf^T V is p x p per head); causal O(T·(c + p)·D), "
            "c = chunk_size; memory O(B·T·D) + O(B·H·(T/c)·p^2) causal"
        ),
        causal=True,
        key_padding_mask=True,
        approximates_softmax=True,
        deviations=(
            "padded keys masked (reference ignores masks; faithful_mask=True reproduces it); causal by "
            "chunked prefix sums in O(T) memory (reference: T x T matrix); SimpleRMSNorm output as in the "
            "LMs (LRA uses BatchNorm); seeded Householder vector"
        ),
        state=StateSize.CONSTANT,  # sum_s Kf_s^T V_s: one p x p matrix per head
    )
    Config = TransNormerConfig

    def __init__(self, config: TransNormerConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D, P = config.dim, config.head_dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        if config.urpe:
            # frozen random orthogonal map (not trained), learned rotary frequencies shared by heads
            self.register_buffer("householder_u", torch.empty(P, **kw))  # (P,)
            self.theta = nn.Parameter(torch.empty(P // 2, **kw))  # (P/2,)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # fairseq MultiheadAttention init used by NormAttention
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if self.config.urpe:
            P = self.config.head_dim
            self.householder_u.copy_(householder_vector(P, self.config.seed))  # fp64 draw, cast
            self.theta.copy_(rotary_frequencies(P))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: True runs the causal variant (position i sees j <= i).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        T = x.shape[1]
        dt = compute_dtype(x.dtype)  # sums over T run in >= fp32
        qf = feature_map(split_heads(self.q_proj(x), c.heads).to(dt), c.variant)  # (B, H, T, P)
        kf = feature_map(split_heads(self.k_proj(x), c.heads).to(dt), c.variant)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, T, P)
        if c.urpe:
            positions = torch.arange(T, device=x.device)
            qf = urpe(qf, self.householder_u, self.theta, positions)  # (B, H, T, P)
            kf = urpe(kf, self.householder_u, self.theta, positions)  # (B, H, T, P)
        if mask is not None and not c.faithful_mask:
            keep = mask[:, None, :, None].to(dt)  # (B, 1, T, 1)
            kf, v = kf * keep, v * keep
        if causal:
            o = causal_linear_attention(qf, kf, v, chunk=c.chunk_size)  # (B, H, T, P)
        else:
            o = linear_attention(qf, kf, v)  # (B, H, T, P)
        y = self.out_proj(simple_rms_norm(merge_heads(o)).to(x.dtype))  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the p x p state S = sum_s Kf_s^T V_s per head (URPE at absolute positions) ---

    def _state_tensors(self, batch, device, dtype):
        H, P = self.config.heads, self.config.head_dim
        return {"S": torch.zeros(batch, H, P, P, device=device, dtype=compute_dtype(dtype))}  # (B, H, P, P)

    def _advance(self, x, mask, state):
        c, S = self.config, state.tensors["S"]  # updated out of place (a snapshot stays valid)
        n = x.shape[1]
        dt = S.dtype
        qf = feature_map(split_heads(self.q_proj(x), c.heads).to(dt), c.variant)  # (B, H, n, P)
        kf = feature_map(split_heads(self.k_proj(x), c.heads).to(dt), c.variant)  # (B, H, n, P)
        v = split_heads(self.v_proj(x), c.heads).to(dt)  # (B, H, n, P)
        if c.urpe:
            positions = torch.arange(state.position, state.position + n, device=x.device)
            qf = urpe(qf, self.householder_u, self.theta, positions)  # (B, H, n, P)
            kf = urpe(kf, self.householder_u, self.theta, positions)  # (B, H, n, P)
        if mask is not None and not c.faithful_mask:
            keep = mask[:, None, :, None].to(dt)  # (B, 1, n, 1)
            kf, v = kf * keep, v * keep
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        scores = torch.matmul(qf, kf.transpose(-1, -2)).masked_fill_(future, 0.0)  # (B, H, n, n)
        o = torch.matmul(scores, v) + torch.matmul(qf, S)  # (B, H, n, P)
        state.tensors["S"] = S + torch.matmul(kf.transpose(-1, -2), v)  # (B, H, P, P)
        return self.out_proj(simple_rms_norm(merge_heads(o)).to(x.dtype))  # (B, n, D)


def transnormer_stack(
    depth: int,
    dim: int,
    heads: int,
    *,
    variant: str = "t1",
    block_size: int = 64,
    urpe: bool = True,
    chunk_size: int = 64,
    faithful_mask: bool = False,
    seed: int = 0,
    device=None,
    dtype=None,
) -> nn.ModuleList:
    """The paper's language-model arrangement of token mixers for ``depth`` layers.

    Layers 0 .. depth//2 - 1 are DiagAttention (``transnormer_diag``), the rest NormAttention
    (``transnormer``); with odd depth the NormAttention half gets the extra layer. Each layer
    draws its Householder vector from ``seed + layer``. Returns the mixers only (the caller adds
    norms, residuals and the GLU feed-forward of the paper's blocks).
    """
    from zoo.mixers.transnormer_diag import DiagAttentionConfig, DiagAttentionMixer

    check_positive_int("depth", depth)
    layers: list[TokenMixer] = []
    for i in range(depth):
        if i < depth // 2:
            config = DiagAttentionConfig(
                dim=dim, heads=heads, variant=variant, block_size=block_size, urpe=urpe,
                faithful_mask=faithful_mask, seed=seed + i,
            )
            layers.append(DiagAttentionMixer(config, device=device, dtype=dtype))
        else:
            config = TransNormerConfig(
                dim=dim, heads=heads, variant=variant, urpe=urpe, chunk_size=chunk_size,
                faithful_mask=faithful_mask, seed=seed + i,
            )
            layers.append(TransNormerMixer(config, device=device, dtype=dtype))
    return nn.ModuleList(layers)

"""Performer (FAVOR+): softmax attention through positive orthogonal random features.

Paper
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021, arXiv 2009.14794.

Mechanism
    With x~ = x p^(-1/4) and r random rows omega_l (orthogonal blocks from QR of Gaussian p x p
    matrices, rows rescaled to Gaussian-vector norms or sqrt(p)), the features
    phi(x) = exp(omega·x~ - ||x~||^2/2 - stab) + 1e-4 are positive and
    E[phi(q)·phi(k)] is proportional to exp(q·k / sqrt(p)). Per head,
    o_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j)), so every output is a
    convex combination of values, in O(T·r·p) time. Omega is drawn once at init from the module's
    own generator (seed ``seed``) and shared by all heads; ``redraw=True`` draws a fresh one every
    ``redraw_interval`` training calls (never in eval). Causal mode computes the same sums over
    j <= i chunk by chunk (quadratic inside a chunk of ``chunk_size``, a carried r x p state
    between chunks): O(T) memory, no T x r x p tensor.

    Precision: for bf16/fp16 inputs the feature maps, exponentials and normalisers run in fp32;
    under autocast its matmuls follow autocast's dtype.

Deviations
    Padded keys are removed by zeroing phi(k) (the LRA wrapper zeroes K and V, but phi(0) != 0, so
    its padded keys still enter the denominator). Stabilisers subtract the max of the whole
    exponent omega·x~ - ||x~||^2/2 (per query row; per (batch, head) over the keys a query can
    see) rather than of omega·x~ alone: identical in exact arithmetic except for the relative
    size of the 1e-4 floor, and a row of large norm can no longer underflow to the floor. The
    key stabiliser is per (batch, head) over real keys (no batch coupling); in causal mode it is
    the running max over keys j <= i, so the floor term cannot leak the future (performer-pytorch
    uses one max over the whole sequence). The constant r^(-1/2) cancels in the ratio and is
    omitted. Stabilisers are detached, as in performer-pytorch.
"""

from __future__ import annotations

import math
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
    check_choice,
    check_inputs,
    check_positive_int,
    check_range,
    keep_mask,
    zero_padded,
)
from zoo.errors import ZooTypeError
from zoo.functional import chunks_of, linear_flops, merge_heads, neg_value, prefer_scan, safe_key_mask, split_heads
from zoo.registry import register
from zoo.state import StateSize


@dataclass(frozen=True)
class PerformerConfig(MixerConfig):
    nb_features: int = cfg(256, "r, number of random features (shared by all heads)")
    ortho_scaling: int = cfg(0, "row norms of omega: 0 = norms of Gaussian p-vectors, 1 = sqrt(p)")
    redraw: bool = cfg(False, "draw a fresh omega every redraw_interval training calls (never in eval)")
    redraw_interval: int = cfg(1000, "training calls between redraws when redraw=True")
    chunk_size: int = cfg(64, "causal mode: tokens per chunk (quadratic inside, carried state between)")
    kernel_eps: float = cfg(1e-4, "positive floor added to every feature (keeps denominators > 0)")
    seed: int = cfg(0, "seed of the module's generator (omega draws)")

    def validate(self) -> None:
        check_positive_int("nb_features", self.nb_features)
        check_choice("ortho_scaling", self.ortho_scaling, (0, 1))
        if not isinstance(self.redraw, bool):
            raise ZooTypeError(f"redraw: expected a bool, got {self.redraw!r}")
        check_positive_int("redraw_interval", self.redraw_interval)
        check_positive_int("chunk_size", self.chunk_size)
        check_range("kernel_eps", self.kernel_eps, 1e-12, 1.0)
        check_positive_int("seed", self.seed, minimum=0)

    @classmethod
    def tiny(cls) -> "PerformerConfig":
        # p = 8: one full orthogonal block and one truncated block; chunks of 8 so T ~ 29 spans 4.
        return cls(dim=16, heads=2, nb_features=12, chunk_size=8)


def performer_flops(c: PerformerConfig, B: int, T: int, causal: bool = False) -> float:
    H, P, R = c.heads, c.head_dim, c.nb_features
    feats = 2 * 2.0 * B * H * T * P * R  # omega·q~ and omega·k~
    if causal:
        C = c.chunk_size
        core = 2.0 * B * H * T * C * (R + P + 1)  # intra-chunk phi(q)·psi(k), weights @ v, row sums
        core += 2 * 2.0 * B * H * T * R * (P + 1)  # chunk states and their read-out
    else:
        core = 2 * 2.0 * B * H * T * R * (P + 1)  # sum_j phi(k_j) [v_j, 1] and phi(q_i) @ that
    return linear_flops(B, T, c.dim, c.dim, count=4) + feats + core


def gaussian_orthogonal_matrix(
    nb_features: int, head_dim: int, scaling: int, generator: torch.Generator
) -> torch.Tensor:
    """(r, p) float64: stacked orthogonal blocks (Haar, via sign-corrected QR), rows rescaled."""
    r, p = nb_features, head_dim
    blocks = []
    for _ in range(math.ceil(r / p)):
        g = torch.randn(p, p, generator=generator, dtype=torch.float64)
        q, rr = torch.linalg.qr(g)  # q (p, p) orthonormal columns
        q = q * torch.where(torch.diagonal(rr) < 0, -1.0, 1.0)  # sign fix: Haar-distributed q
        blocks.append(q.T)  # rows orthonormal
    omega = torch.cat(blocks)[:r]  # (r, p)
    if scaling == 0:
        norms = torch.randn(r, p, generator=generator, dtype=torch.float64).norm(dim=1)  # (r,)
    else:
        norms = torch.full((r,), math.sqrt(p), dtype=torch.float64)
    return norms[:, None] * omega  # (r, p)


def favor_logits(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """omega·x~ - ||x~||^2 / 2 for x (B, H, T, P), x~ = x p^(-1/4): (B, H, T, R)."""
    x = x * x.shape[-1] ** -0.25
    proj = torch.matmul(x, omega.t())  # (B, H, T, R)
    return proj - 0.5 * x.square().sum(-1, keepdim=True)


def favor_query_features(q: torch.Tensor, omega: torch.Tensor, eps: float) -> torch.Tensor:
    """phi(q) (B, H, T, R), stabilised per row: the largest feature of each row is 1 + eps.

    Subtracting the row max of the whole exponent removes -||q~||^2/2 exactly, so only omega·q~
    is computed.
    """
    proj = torch.matmul(q * q.shape[-1] ** -0.25, omega.t())  # (B, H, T, R)
    return torch.exp(proj - proj.amax(-1, keepdim=True).detach()) + eps


def favor_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    omega: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    chunk_size: int = 64,
    eps: float = 1e-4,
) -> torch.Tensor:
    """FAVOR+ attention. q, k, v (B, H, T, P); omega (R, P); mask bool (B, T) over keys -> (B, H, T, P).

    Every query i uses the key features phi_i(k_j) = exp(a_j - m_i) + eps, a_j = omega·k~_j -
    ||k~_j||^2/2, m_i the max of a over the keys i can see (all real keys, or real keys j <= i).
    """
    B, H, T, _ = q.shape
    keys = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else safe_key_mask(mask)
    phi_q = favor_query_features(q, omega, eps)  # (B, H, T, R)
    a = favor_logits(k, omega)  # (B, H, T, R)
    if mask is not None:
        a = a.masked_fill(~keys[:, None, :, None], neg_value(a.dtype))
    if causal:
        return _causal_favor(phi_q, a, v, None if mask is None else keys, chunk_size, eps)
    m = a.amax(dim=(-1, -2), keepdim=True).detach()  # (B, H, 1, 1)
    phi_k = torch.exp(a - m) + eps  # (B, H, T, R)
    if mask is not None:  # zero phi(k) itself: phi(0) != 0, so zeroed K would still count
        phi_k = phi_k * keys[:, None, :, None].to(a.dtype)
    kv = torch.matmul(phi_k.transpose(-1, -2), v)  # (B, H, R, P)
    k_sum = phi_k.sum(dim=-2)  # (B, H, R)
    num = torch.matmul(phi_q, kv)  # (B, H, T, P)
    den = torch.matmul(phi_q, k_sum.unsqueeze(-1))  # (B, H, T, 1)
    return num / den


def _decayed_prefix_scan(u: torch.Tensor, m_end: torch.Tensor) -> torch.Tensor:
    """S_c = sum_{c' <= c} u_c' exp(M_c' - M_c) for u (B, H, N, R, X), M = m_end (B, H, N) non-decreasing.

    Hillis-Steele doubling: ceil(log2 N) steps of whole-tensor ops (a few kernels each instead of N
    small ones); every factor exp(M_c' - M_c) <= 1, so nothing overflows.
    """
    N = u.shape[2]
    s, step = u, 1
    while step < N:
        w = torch.exp(m_end[..., :-step] - m_end[..., step:])[..., None, None]  # (B, H, N - step, 1, 1)
        s = torch.cat([s[:, :, :step], s[:, :, step:] + s[:, :, :-step] * w], dim=2)  # (B, H, N, R, X)
        step *= 2
    return s


def _causal_favor(
    phi_q: torch.Tensor,
    a: torch.Tensor,
    v: torch.Tensor,
    keys: torch.Tensor | None,
    chunk: int,
    eps: float,
    scan: bool | None = None,
) -> torch.Tensor:
    """Causal FAVOR+ with a running-max key stabiliser, chunked (O(T) memory).

    Across chunks the states are a loop on the CPU (``scan=False``) and a doubling scan elsewhere
    (``scan=True``, :func:`_decayed_prefix_scan`); None picks by device (``prefer_scan``).

    psi_j = exp(a_j - m_j) with m the running max, so for j <= i
    phi_q_i·(exp(a_j - m_i) + eps) = (phi_q_i·psi_j) exp(m_j - m_i) + eps·sum(phi_q_i): every
    factor is <= 1 (no overflow) and nothing depends on keys after i.
    """
    B, H, T, R = a.shape
    m = torch.cummax(a.amax(-1), dim=-1).values.detach()  # (B, H, T) running max
    psi = torch.exp(a - m.unsqueeze(-1))  # (B, H, T, R)
    if keys is None:
        vm = v
        counts = torch.arange(1, T + 1, dtype=a.dtype, device=a.device)[:, None]  # (T, 1)
    else:
        real = keys[:, None, :, None].to(a.dtype)  # (B, 1, T, 1)
        psi = psi * real  # a padded key before any real one has exp(NEG - NEG) = 1: zero it
        vm = v * real  # (B, H, T, P)
        counts = real.cumsum(dim=2)  # (B, 1, T, 1)
    # The eps floor contributes eps * sum(phi_q_i) * (sum of visible v_j, count of visible keys).
    q_total = phi_q.sum(-1, keepdim=True)  # (B, H, T, 1)
    num_eps = eps * q_total * vm.cumsum(dim=2)  # (B, H, T, P)
    den_eps = eps * q_total * counts  # (B, H, T, 1)

    N, pad = chunks_of(T, chunk)
    if pad:
        phi_q, psi, vm = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, psi, vm))  # (B, H, T', .)
        m = F.pad(m, (0, pad), mode="replicate")  # (B, H, T')
    # (B, H, T', X) -> (B, H, N, C, X)
    phi_q, psi, vm = (t.reshape(B, H, N, chunk, t.shape[-1]) for t in (phi_q, psi, vm))
    m = m.reshape(B, H, N, chunk)  # (B, H, N, C)

    # Inside a chunk: weights w_ij = (phi_q_i·psi_j) exp(m_j - m_i) for j <= i.
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=a.device).tril()  # (C, C)
    decay = torch.exp((m.unsqueeze(-2) - m.unsqueeze(-1)).clamp_max(0.0))  # (B, H, N, C, C) [i, j]
    w = torch.matmul(phi_q, psi.transpose(-1, -2)) * decay * tril  # (B, H, N, C, C)
    vm1 = torch.cat([vm, torch.ones_like(vm[..., :1])], dim=-1)  # (B, H, N, C, P+1): [v, 1]
    out = torch.matmul(w, vm1)  # (B, H, N, C, P+1): numerator | denominator

    # Between chunks: state S_c = sum_{j <= end of c} psi_j exp(m_j - M_c) [v_j, 1]^T, M_c = m at
    # the end of chunk c; chunk c reads S_{c-1} scaled by exp(M_{c-1} - m_i) <= 1. The decay
    # exp(M_{c-1} - M_c) <= 1 keeps the recurrence bounded. The loop holds one r x (p+1) state.
    m_end = m[..., -1]  # (B, H, N)
    to_end = psi * torch.exp(m - m_end.unsqueeze(-1)).unsqueeze(-1)  # (B, H, N, C, R)
    updates = torch.matmul(to_end.transpose(-1, -2), vm1).unbind(dim=2)  # N x (B, H, R, P+1)
    m_prev = F.pad(m_end[..., :-1], (1, 0))  # (B, H, N): M_{c-1} (c = 0 reads a zero state)
    reads = (phi_q * torch.exp((m_prev.unsqueeze(-1) - m).clamp_max(0.0)).unsqueeze(-1)).unbind(dim=2)
    if scan is None:
        scan = prefer_scan(a.device)
    if scan:
        states = _decayed_prefix_scan(torch.stack(updates, dim=2), m_end)  # (B, H, N, R, P+1): S_c
        past = F.pad(states[:, :, :-1], (0, 0, 0, 0, 1, 0))  # (B, H, N, R, P+1): S_{c-1}, zero for c = 0
        out = out + torch.matmul(torch.stack(reads, dim=2), past)  # (B, H, N, C, P+1)
    else:
        decays = torch.exp(m_end[..., :-1] - m_end[..., 1:])[..., None, None].unbind(dim=2)  # N-1 x (B, H, 1, 1)
        inter = [torch.zeros_like(out[:, :, 0])]  # chunk 0 has no past
        for c in range(1, N):
            state = updates[0] if c == 1 else state * decays[c - 2] + updates[c - 1]  # S_{c-1}
            inter.append(torch.matmul(reads[c], state))  # (B, H, C, P+1)
        out = out + torch.stack(inter, dim=2)  # (B, H, N, C, P+1)
    num, den = out[..., :-1], out[..., -1:]

    num = num.reshape(B, H, N * chunk, -1)[:, :, :T] + num_eps  # (B, H, T, P)
    den = den.reshape(B, H, N * chunk, 1)[:, :, :T] + den_eps  # (B, H, T, 1)
    # A query that sees no real key (only possible for a padded query) gets 0, not 0/0.
    return num / torch.where(den > 0, den, torch.ones_like(den))


@register
class PerformerMixer(TokenMixer):
    spec = MixerSpec(
        name="performer",
        title="Rethinking Attention with Performers",
        arxiv="2009.14794",
        year=2021,
        time=Complexity.LINEAR,
        memory=Complexity.LINEAR,
        flops=performer_flops,
        cost_note="O(T·r·D) time, O(B·H·T·r) memory, r = nb_features; causal adds O(T·C·(r+p)), C = chunk_size",
        causal=True,
        key_padding_mask=True,
        stochastic=True,
        approximates_softmax=True,
        deviations=(
            "phi(k) of padded keys zeroed (reference leaves them in the denominator); stabilisers use "
            "the full exponent and are per (batch, head), running max in causal mode; r^-1/2 omitted "
            "(cancels)"
        ),
        state=StateSize.CONSTANT,  # r x (p + 1) prefix sums per head, their running max, eps sums
    )
    Config = PerformerConfig

    def __init__(self, config: PerformerConfig, *, device=None, dtype=None):
        super().__init__(config)
        kw = {"device": device, "dtype": dtype}
        D = config.dim
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, D, **kw)
        self.v_proj = nn.Linear(D, D, **kw)
        self.out_proj = nn.Linear(D, D, **kw)
        self.generator = torch.Generator(device="cpu")
        self.register_buffer(
            "omega", torch.empty(config.nb_features, config.head_dim, **kw), persistent=True
        )  # (R, P)
        self._init_weights()

    def _init_weights(self) -> None:
        self.generator.manual_seed(self.config.seed)
        self.calls = 0  # training calls seen, for redraw_interval
        if self.omega.device.type != "meta":
            self.redraw_features()

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Replace omega by a fresh draw from the module's generator."""
        c = self.config
        omega = gaussian_orthogonal_matrix(c.nb_features, c.head_dim, c.ortho_scaling, self.generator)
        self.omega.copy_(omega.to(self.omega.dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False) -> torch.Tensor:
        """Mix tokens: x (B, T, D) in the module's dtype -> (B, T, D).

        mask: optional bool (B, T), True = real token (None: all real); padded output rows are zero.
        causal: True runs the causal variant (position i sees j <= i).
        Extra inputs: none.
        """
        check_inputs(self, x, mask, causal)
        c = self.config
        if self.training and c.redraw:
            if self.calls % c.redraw_interval == 0 and self.calls > 0:
                self.redraw_features()
            self.calls += 1
        H = c.heads
        q = split_heads(self.q_proj(x), H)  # (B, H, T, P)
        k = split_heads(self.k_proj(x), H)  # (B, H, T, P)
        v = split_heads(self.v_proj(x), H)  # (B, H, T, P)
        # Exponentials and normalisers are fragile in half precision: run the core in fp32 there.
        ct = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        o = favor_attention(
            q.to(ct), k.to(ct), v.to(ct), self.omega.to(ct), mask, causal, c.chunk_size, c.kernel_eps
        )  # (B, H, T, P)
        y = self.out_proj(merge_heads(o.to(x.dtype)))  # (B, T, D)
        return zero_padded(y, mask)

    # -- generation: the causal forward's chunk state, carried across calls --------------------

    def _state_tensors(self, batch, device, dtype):
        c = self.config
        H, P, R = c.heads, c.head_dim, c.nb_features
        ct = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        kw = dict(device=device, dtype=ct)
        return {
            "S": torch.zeros(batch, H, R, P + 1, **kw),  # sum_j psi_j exp(m_j - M) [v_j, 1]^T
            "M": torch.full((batch, H), neg_value(ct), **kw),  # running max of the key exponents
            "acc": torch.zeros(batch, H, P + 1, **kw),  # [sum of real v_j, count of real keys]
        }

    def _advance(self, x, mask, state):
        c, t = self.config, state.tensors
        S, M_prev, ct = t["S"], t["M"], t["S"].dtype
        H, n = c.heads, x.shape[1]
        q = split_heads(self.q_proj(x), H).to(ct)  # (B, H, n, P)
        k = split_heads(self.k_proj(x), H).to(ct)  # (B, H, n, P)
        v = split_heads(self.v_proj(x), H).to(ct)  # (B, H, n, P)
        omega = self.omega.to(ct)
        phi_q = favor_query_features(q, omega, c.kernel_eps)  # (B, H, n, R)
        a = favor_logits(k, omega)  # (B, H, n, R)
        real = keep_mask(x, mask)[:, None, :, None].to(ct)  # (B, 1, n, 1)
        if mask is not None:
            a = a.masked_fill(~mask[:, None, :, None], neg_value(ct))
        m = torch.maximum(torch.cummax(a.amax(-1), dim=-1).values, M_prev[..., None])  # (B, H, n)
        psi = torch.exp(a - m.unsqueeze(-1)) * real  # (B, H, n, R)
        vm1 = torch.cat([v * real, real.expand(*v.shape[:3], 1)], dim=-1)  # (B, H, n, P+1): [v, 1]
        # inside the chunk (w_ij = phi_q_i·psi_j exp(m_j - m_i), j <= i), then the carried past
        tril = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        decay = torch.exp((m.unsqueeze(-2) - m.unsqueeze(-1)).clamp_max(0.0))  # (B, H, n, n) [i, j]
        out = torch.matmul(torch.matmul(phi_q, psi.transpose(-1, -2)) * decay * tril, vm1)  # (B, H, n, P+1)
        out = out + torch.matmul(phi_q * torch.exp(M_prev[..., None] - m).unsqueeze(-1), S)
        acc = t["acc"].unsqueeze(2) + vm1.cumsum(dim=2)  # (B, H, n, P+1)
        out = out + c.kernel_eps * phi_q.sum(-1, keepdim=True) * acc  # the eps floor
        m_end = m[..., -1]  # (B, H)
        to_end = psi * torch.exp(m - m_end.unsqueeze(-1)).unsqueeze(-1)  # (B, H, n, R)
        t["S"] = S * torch.exp(M_prev - m_end)[..., None, None] + torch.matmul(to_end.transpose(-1, -2), vm1)
        t["M"], t["acc"] = m_end, acc[:, :, -1]
        num, den = out[..., :-1], out[..., -1:]  # (B, H, n, P), (B, H, n, 1)
        o = num / torch.where(den > 0, den, torch.ones_like(den))
        return self.out_proj(merge_heads(o.to(x.dtype)))  # (B, n, D)

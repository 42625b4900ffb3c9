"""The peers' pure-PyTorch references for the modern mixers, located and loaded at run time.

Nothing of theirs is vendored or committed. The files come from two public distributions,
unpacked into a peers folder (``--peers-dir``, else ``$ZOO_PEERS``, else ``.ref/peers`` in the
repository, which git ignores)::

    pip download --no-deps fla-core -d /tmp/peers && unzip -q /tmp/peers/fla_core-*.whl 'fla/*' -d .ref/peers
    MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: mamba-ssm -d /tmp/peers
    tar xzf /tmp/peers/mamba_ssm-*.tar.gz --strip-components=1 -C .ref/peers --wildcards '*/mamba_ssm/modules/ssd_minimal.py'

Each file is imported by path, alone: fla's package ``__init__`` (which needs Triton) is never
run, and the Triton import at the top of ``ssd_minimal.py`` (used only by its own GPU self-test)
is answered by a placeholder module while the file loads.

Adapters give every peer op the signature of the zoo mixers' swappable causal core
(``Mixer.scan``): tensors (B, H, T, .) in, o (B, H, T, V) out, queries already scaled.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent

# peer key -> file inside the peers folder
PEER_FILES = {
    "ssd_minimal": "mamba_ssm/modules/ssd_minimal.py",
    "simple_gla": "fla/ops/simple_gla/naive.py",
    "retention": "fla/ops/retention/naive.py",
    "gla": "fla/ops/gla/naive.py",
    "delta_rule": "fla/ops/delta_rule/naive.py",
    "gated_delta_rule": "fla/ops/gated_delta_rule/naive.py",
}

FETCH_HINT = (
    "fetch them with: pip download --no-deps fla-core -d /tmp/peers && unzip -q /tmp/peers/fla_core-*.whl "
    "'fla/*' -d DIR; MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: mamba-ssm -d /tmp/peers "
    "&& tar xzf /tmp/peers/mamba_ssm-*.tar.gz --strip-components=1 -C DIR --wildcards '*/mamba_ssm/modules/ssd_minimal.py'"
)


class PeerMissing(Exception):
    """A peer file is not in the peers folder (the message is one line saying how to fetch it)."""


def peers_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The peers folder: ``explicit``, else ``$ZOO_PEERS``, else ``<repo>/.ref/peers``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("ZOO_PEERS"):
        return Path(os.environ["ZOO_PEERS"])
    return ROOT / ".ref" / "peers"


def peer_path(key: str, root: Path) -> Path:
    if key not in PEER_FILES:
        raise KeyError(f"peer: expected one of {', '.join(PEER_FILES)}, got {key!r}")
    path = root / PEER_FILES[key]
    if not path.is_file():
        raise PeerMissing(f"peer {key}: no {PEER_FILES[key]} under {root} (--peers-dir / $ZOO_PEERS); {FETCH_HINT.replace('DIR', str(root))}")
    return path


def _triton_placeholders() -> dict[str, types.ModuleType]:
    """Stand-ins for the module ``ssd_minimal.py`` imports only for its GPU self-test."""

    def unavailable(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("mamba_chunk_scan_combined (Triton) is not loaded: the peer is used for its pure-PyTorch listing")

    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "mamba_ssm.ops.triton.ssd_combined"]
    mods = {n: types.ModuleType(n) for n in names}
    mods["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = unavailable
    return mods


def load_peer(key: str, root: Path | None = None) -> types.ModuleType:
    """Import one peer file by path (raises :class:`PeerMissing` when it is absent)."""
    path = peer_path(key, root or peers_dir())
    spec = importlib.util.spec_from_file_location(f"_zoo_peer_{key}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    stand_ins = _triton_placeholders() if key == "ssd_minimal" else {}
    saved = {n: sys.modules.get(n) for n in stand_ins}
    sys.modules.update({n: m for n, m in stand_ins.items() if saved[n] is None})
    try:
        spec.loader.exec_module(module)
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
    return module


def _pad_time(t, multiple: int, dim: int = 1):
    import torch.nn.functional as F

    pad = (-t.shape[dim]) % multiple
    if pad == 0:
        return t
    return F.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, pad])


# --- adapters: zoo core signature (q, k, v, log_g, chunk=..., ...) -> o (B, H, T, V) ---------


def ssd_scan(root: Path | None = None) -> Callable:
    """Mamba-2 SSD via ``ssd_minimal_discrete``: q = C, k = B (shared by the heads: head 0 is
    passed as the single group), v = dt x, log_g = dt A; T is zero-padded to the chunk."""
    peer = load_peer("ssd_minimal", root).ssd_minimal_discrete

    def scan(q, k, v, log_g, chunk: int = 64, **_):
        T = q.shape[2]
        X = _pad_time(v.transpose(1, 2), chunk)  # (B, Tp, H, P)
        A = _pad_time(log_g.transpose(1, 2), chunk)  # (B, Tp, H)
        Bm = _pad_time(k[:, :1].transpose(1, 2), chunk)  # (B, Tp, 1, N)
        Cm = _pad_time(q[:, :1].transpose(1, 2), chunk)  # (B, Tp, 1, N)
        y, _ = peer(X, A, Bm, Cm, chunk)  # (B, Tp, H, P)
        return y[:, :T].transpose(1, 2)  # (B, H, T, P)

    return scan


def simple_gla_scan(root: Path | None = None) -> Callable:
    """Scalar-decay linear attention via fla's ``naive_chunk_simple_gla`` (scale 1: q pre-scaled)."""
    peer = load_peer("simple_gla", root).naive_chunk_simple_gla

    def scan(q, k, v, log_g, chunk: int = 64, **_):
        o, _ = peer(*(t.transpose(1, 2) for t in (q, k, v, log_g)), chunk_size=chunk, scale=1.0)  # (B, T, H, V)
        return o.transpose(1, 2)  # (B, H, T, V)

    return scan


def retention_scan(root: Path | None = None) -> Callable:
    """RetNet's fixed decays via fla's ``naive_retention`` (parallel, T x T: short T only); it
    scales q by K^-0.5 itself, so the pre-scaled q is scaled back; log_g is implied by the head."""
    peer = load_peer("retention", root).naive_retention

    def scan(q, k, v, log_g, **_):
        return peer(q * q.shape[-1] ** 0.5, k, v)  # (B, H, T, V)

    return scan


def gla_scan(root: Path | None = None) -> Callable:
    """Per-channel decay via fla's ``naive_recurrent_gla`` (token loop; fla-core ships no chunked
    pure-PyTorch GLA); it scales q by K^-0.5 itself, so the pre-scaled q is scaled back."""
    peer = load_peer("gla", root).naive_recurrent_gla

    def scan(q, k, v, log_g, **_):
        q = q * q.shape[-1] ** 0.5
        o, _ = peer(*(t.transpose(1, 2) for t in (q, k, v, log_g)))  # (B, T, H, V)
        return o.transpose(1, 2)  # (B, H, T, V)

    return scan


def delta_rule_scan(root: Path | None = None) -> Callable:
    """Delta rule via fla's ``delta_rule_chunkwise``: scan(q, k, v, beta, chunk=...), (B, H, T, .),
    q pre-scaled (scaled back: the peer scales by K^-0.5), T zero-padded to the chunk."""
    peer = load_peer("delta_rule", root).delta_rule_chunkwise

    def scan(q, k, v, beta, chunk: int = 32, **_):
        T = q.shape[2]
        q = q * q.shape[-1] ** 0.5
        q, k, v = (_pad_time(t, chunk, dim=2) for t in (q, k, v))
        beta = _pad_time(beta[..., None], chunk, dim=2)[..., 0]
        o, _ = peer(q, k, v, beta, chunk_size=chunk)
        return o[:, :, :T]

    return scan


def gated_delta_rule_scan(root: Path | None = None) -> Callable:
    """Gated delta rule via fla's ``naive_chunk_gated_delta_rule``: scan(q, k, v, beta, log_g,
    chunk=...), (B, H, T, .), q pre-scaled (scale 1 is passed)."""
    peer = load_peer("gated_delta_rule", root).naive_chunk_gated_delta_rule

    def scan(q, k, v, beta, log_g, chunk: int = 64, **_):
        args = (t.transpose(1, 2) for t in (q, k, v, log_g, beta))
        o, _ = peer(*args, chunk_size=chunk, scale=1.0)  # (B, T, H, V)
        return o.transpose(1, 2)

    return scan


# peer key -> adapter factory
SCANS = {
    "ssd_minimal": ssd_scan,
    "retention": retention_scan,
    "simple_gla": simple_gla_scan,
    "gla": gla_scan,
    "delta_rule": delta_rule_scan,
    "gated_delta_rule": gated_delta_rule_scan,
}


def peer_scan(key: str, root: Path | None = None) -> Callable:
    """The adapted core of peer ``key`` (raises :class:`PeerMissing` when its file is absent)."""
    return SCANS[key](root)

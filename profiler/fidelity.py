"""How close each softmax approximation is to exact softmax attention, as T grows.

For every registered mixer with ``spec.approximates_softmax`` (or the names given), on the same
random inputs: the mixer's output ``y`` and exact softmax attention ``y*`` computed with the
mixer's *own* ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (the contract names them so),
``y* = out_proj(softmax(Q K^T / sqrt(p)) V)`` per head. Recorded per (mixer, T): the relative
Frobenius error ``||y - y*|| / ||y*||`` and the mean cosine similarity of output rows, averaged
over seeds (each seed draws new weights, new inputs and, where the config has a ``seed`` field,
new random features / sketches), with the spread over seeds.

Branches a spec declares outside the approximation (``spec.fidelity_overrides``, e.g. Nystrom's
conv skip) are switched off for this panel, and the record's label names them
(``nystrom[conv_kernel=0]``). Inputs are N(0, 1) and weights at their initialisation (eval
mode): the error of a mixer with trained, peaked attention may differ; this is a like-for-like
comparison at one operating point.

Records are ``kind="fidelity"`` (``docs/RECORDS.md``), appended one line at a time after a header,
so ``reports`` can read them next to a profile. A mixer that cannot run a cell (a length above its
maximum, no causal variant) gets ``status="unsupported"``; one that fails, or lacks the
projections, ``status="error"`` with the reason; the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from profiler.cases import canonical_dtype, format_label, parse_lengths
from profiler.builders import torch_dtype
from profiler.cell import classify_exception
from profiler.records import SCHEMA, RecordWriter, check_writable, environment, now_iso
from profiler.settings import resolve_device
from zoo.base import TokenMixer
from zoo.errors import ZooError, ZooValueError
from zoo.functional import merge_heads, sdpa_attention, split_heads
from zoo.registry import create_mixer, get_config, get_spec, list_mixers

__all__ = [
    "DEFAULT_LENGTHS",
    "PROJECTIONS",
    "exact_softmax_output",
    "missing_projections",
    "fidelity_errors",
    "run_fidelity",
]

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def missing_projections(mixer: torch.nn.Module) -> list[str]:
    """Which of q_proj, k_proj, v_proj, out_proj the mixer lacks (exact attention needs all four)."""
    return [name for name in PROJECTIONS if not isinstance(getattr(mixer, name, None), torch.nn.Module)]


def exact_softmax_output(
    mixer: TokenMixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """Exact softmax attention through ``mixer``'s own projections: (B, T, D) -> (B, T, D)."""
    missing = missing_projections(mixer)
    if missing:
        raise ZooValueError(
            f"{mixer.spec.name}: fidelity: expected the attention projections {', '.join(PROJECTIONS)} "
            f"(spec.approximates_softmax=True), missing {', '.join(missing)}"
        )
    H = mixer.config.heads
    q = split_heads(mixer.q_proj(x), H)  # (B, H, T, P)
    k = split_heads(mixer.k_proj(x), H)  # (B, H, T, P)
    v = split_heads(mixer.v_proj(x), H)  # (B, H, T, P)
    o = sdpa_attention(q, k, v, mask, causal)  # (B, H, T, P)
    y = mixer.out_proj(merge_heads(o))  # (B, T, D)
    return y if mask is None else y * mask[..., None].to(y.dtype)


def fidelity_errors(
    mixer: TokenMixer, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False
) -> tuple[float, float]:
    """(relative Frobenius error over real rows, mean cosine similarity of real rows) of
    ``mixer(x)`` against :func:`exact_softmax_output`."""
    with torch.no_grad():
        y = mixer(x, mask, causal=causal)
        if y.shape != x.shape:
            raise ZooValueError(
                f"{mixer.spec.name}: fidelity: expected an output of shape {tuple(x.shape)}, got {tuple(y.shape)}"
            )
        ref = exact_softmax_output(mixer, x, mask, causal)
    keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
    y, ref = y[keep].double(), ref[keep].double()  # (N, D) real rows
    if not torch.isfinite(y).all():
        raise FloatingPointError("non-finite output")
    rel = float(torch.linalg.norm(y - ref) / torch.linalg.norm(ref).clamp_min(1e-300))
    cos = torch.nn.functional.cosine_similarity(y, ref, dim=-1, eps=1e-12)  # (N,)
    return rel, float(cos.mean())


class _NoProjections(Exception):
    pass


class _Unsupported(Exception):
    """A cell the spec or the config declares impossible (recorded as ``unsupported``)."""


def _label(name: str, overrides: dict[str, Any]) -> str:
    """'performer[nb_features=64]': as the profiler labels cells; dim and heads are cell fields of
    their own, so they stay out of the label."""
    return format_label(name, {k: v for k, v in overrides.items() if v is not None and k not in ("dim", "heads")})


def run_fidelity(
    mixers: Sequence[str] | None = None,
    lengths: str | Sequence[int] = DEFAULT_LENGTHS,
    seeds: int = 3,
    batch: int = 1,
    dtype: str = "fp32",
    device: str = "cpu",
    causal: bool = False,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every mixer at every length; append the records to ``out`` (if given) and return them.

    ``mixers``: registry names; default every mixer with ``spec.approximates_softmax``. Naming one
    without the flag is allowed (``softmax`` itself reads ~1e-7: a calibration row).
    ``lengths``: ints or profiler-style text (``256..4k``). ``overrides``: config fields applied to
    every mixer that has them (e.g. ``dim``, ``heads``). User errors raise ``ZooValueError`` before
    anything is written.
    """
    names = list(mixers) if mixers else list_mixers(approximates_softmax=True)
    for name in names:
        get_spec(name)  # unknown names fail here, before anything is written
    if not names:
        raise ZooValueError("mixers: expected at least one mixer, got none (no registered mixer approximates softmax)")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ZooValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ZooValueError(f"batch: expected an integer >= 1, got {batch!r}")
    lengths = parse_lengths(lengths)
    dtype = canonical_dtype(dtype)
    device = resolve_device(device)
    overrides = dict(overrides or {})
    path = check_writable(out) if out is not None else None

    run_id = secrets.token_hex(6)
    header = {
        "kind": "header", "schema": SCHEMA, "run_id": run_id, "created": now_iso(), "command": list(sys.argv),
        "env": environment(torch.get_num_threads(), device),
        "settings": {"kind": "fidelity", "lengths": lengths, "mixers": names, "seeds": seeds, "batch": batch,
                     "dtype": dtype, "device": device, "causal": causal, "overrides": overrides},
    }
    writer = RecordWriter(path) if path is not None else None
    try:
        if writer:
            writer.append(header)
        return _sweep(names, lengths, seeds, batch, dtype, device, causal, overrides, run_id, writer, progress)
    finally:
        if writer:
            writer.close()


def _sweep(names, lengths, seeds, batch, dtype, device, causal, overrides, run_id, writer, progress):
    records = []
    for name in names:
        spec = get_spec(name)
        fields = {f.name for f in dataclasses.fields(get_config(name).__class__)}
        mine = {**dict(spec.fidelity_overrides), **{k: v for k, v in overrides.items() if k in fields}}
        try:
            config = get_config(name, **mine)
            config_dict = dataclasses.asdict(config)
        except ZooError as exc:
            config, config_dict = None, dict(mine)
            config_error: BaseException | None = exc
        else:
            config_error = None
        for T in lengths:
            record: dict[str, Any] = {
                "kind": "fidelity", "schema": SCHEMA, "run_id": run_id, "mixer": name,
                "label": _label(name, mine), "config": config_dict, "T": T, "batch": batch,
                "dim": config.dim if config else mine.get("dim"), "heads": config.heads if config else mine.get("heads"),
                "dtype": dtype, "causal": causal, "status": "ok", "reason": None, "rel_error": None,
                "rel_error_std": None, "cosine": None, "n_seeds": 0,
            }
            if progress:
                progress(f"{record['label']} T={T}")
            try:
                if config_error is not None:  # the config refuses this cell (a length above its maximum)
                    raise _Unsupported(str(config_error))
                if causal and not spec.causal:
                    raise _Unsupported(f"{name}: causal: expected False, this mixer has no causal variant")
                if spec.reduces_length:
                    raise _Unsupported(f"{name}: fidelity: the output is shorter than the input (reduces_length)")
                errors, cosines = [], []
                for seed in range(seeds):
                    torch.manual_seed(seed)  # the projections' initialisation
                    seeded = {"seed": seed} if "seed" in fields and "seed" not in mine else {}
                    mixer = create_mixer(name, device=device, dtype=torch_dtype(dtype), **mine, **seeded).eval()
                    missing = missing_projections(mixer)
                    if missing:  # a contract breach, not a limitation: an error
                        raise _NoProjections(
                            f"{name}: no {', '.join(missing)}: exact softmax with the mixer's own projections "
                            "is undefined (the contract names them q_proj, k_proj, v_proj, out_proj)"
                        )
                    g = torch.Generator(device="cpu").manual_seed(10_000 + seed)
                    x = torch.randn(batch, T, mixer.dim, generator=g, dtype=torch_dtype(dtype)).to(device)  # (B, T, D)
                    rel, cos = fidelity_errors(mixer, x, causal=causal)
                    errors.append(rel)
                    cosines.append(cos)
                mean = sum(errors) / len(errors)
                std = math.sqrt(sum((e - mean) ** 2 for e in errors) / (len(errors) - 1)) if len(errors) > 1 else 0.0
                record.update(rel_error=mean, rel_error_std=std, cosine=sum(cosines) / len(cosines), n_seeds=len(errors))
            except _NoProjections as exc:
                record.update(status="error", reason=str(exc))
            except _Unsupported as exc:  # declared by the spec or the config: not a failure
                record.update(status="unsupported", reason=str(exc))
            except Exception as exc:  # a failing mixer is a record, not the end of the sweep
                status, reason = classify_exception(exc)
                record.update(status=status, reason=reason)
            records.append(record)
            if writer:
                writer.append(record)
    return records

"""Builders: a cell's module and inputs as a zero-argument :class:`Step`. The only room that
imports ``zoo`` (the registry's mixers and :class:`zoo.models.Encoder`).

A builder is ``build(cell, device, dtype) -> Step``; :func:`build_step` is the registry's (mixer
scope: the mixer alone; model scope: the LRA-style encoder with loss and optimizer step). Tests
and benchmarks pass their own by reference (``"path/to/file.py:function"`` or
``"module:function"``, :func:`load_ref`). Inputs are built here, outside every timed region.

``cell.pad_fraction`` F > 0: the last ``round(F*T)`` tokens of every sequence are padding and the
step passes the bool keep-mask (True = real token) to the mixer / encoder. ``cell.compile``: the
mixer call (or the encoder's forward / loss) runs under ``torch.compile`` with that backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from profiler.cases import DTYPES, Cell

__all__ = ["Step", "Decoder", "build_step", "build_decoder", "load_ref", "load_builder", "torch_dtype", "check_tensor", "padding_mask", "compiled"]


@dataclass
class Step:
    """What a builder returns: a zero-argument step and what is known about it.

    ``fn()`` runs one forward (no grad) or one training step and returns its output (checked on
    the first call by ``check``, which raises on a bad shape or non-finite values). ``reset()``
    frees what the previous call left behind (gradients), so that the memory pass's baseline does
    not hold memory the step itself frees and re-allocates. ``keeps_state``: the first call creates
    state that later calls keep (an optimizer's), so the step that is measured, after warm-up, is
    the second; a prediction makes one call first (:func:`profiler.memory.traced_step`).
    """

    fn: Callable[[], Any]
    params: int = 0
    flops_analytic: float | None = None
    check: Callable[[Any], None] | None = None
    reset: Callable[[], None] | None = None
    keeps_state: bool = False


@dataclass
class Decoder:
    """What :func:`build_decoder` returns for a ``mode="decode"`` cell (generation at context T).

    ``prefill()`` -> (outputs (B, T, D), a fresh state holding the prompt); ``step(state)`` -> the
    output (B, 1, D) of one new token, the state advanced in place; ``state_bytes(state)`` -> bytes
    held by the state's tensors; ``state_class`` is the spec's declared size ("O(1)", "O(w)", "O(T)").
    """

    prefill: Callable[[], Any]
    step: Callable[[Any], Any]
    state_bytes: Callable[[Any], int]
    state_class: str
    params: int = 0
    check: Callable[[Any, tuple], None] | None = None


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, DTYPES[name])


def check_tensor(what: str, t: Any, shape: tuple | None = None) -> None:
    """Raise (one line, ``check: ...``) on a non-tensor, a wrong shape or non-finite values."""
    if not isinstance(t, torch.Tensor):
        raise RuntimeError(f"check: {what}: expected a tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"check: {what}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise RuntimeError(f"check: {what}: non-finite values (NaN or inf)")


def padding_mask(B: int, T: int, pad_fraction: float, device: torch.device) -> torch.Tensor | None:
    """Bool (B, T) keep-mask with the last round(F*T) tokens padded (None when F == 0)."""
    n_pad = int(round(float(pad_fraction or 0.0) * T))
    if n_pad <= 0:
        return None
    mask = torch.ones(B, T, dtype=torch.bool, device=device)  # (B, T)
    mask[:, T - min(n_pad, T):] = False
    return mask


def compiled(fn: Callable[[], Any], cell: Cell) -> Callable[[], Any]:
    """``fn`` under ``torch.compile`` with the cell's backend (``fn`` itself for eager cells)."""
    return torch.compile(fn, backend=cell.compile) if cell.compile else fn


def _overrides(cell: Cell) -> dict[str, Any]:
    return {k: v for k, v in cell.config.items() if k not in ("dim", "heads")}


def build_step(cell: Cell, device: torch.device, dtype: torch.dtype) -> Step:
    """The registry's builder: mixer scope (the mixer alone) or model scope (the LRA encoder)."""
    if cell.scope == "model":
        return _build_model_step(cell, device, dtype)
    from zoo.registry import create_mixer

    module = create_mixer(cell.mixer, dim=cell.dim, heads=cell.heads, device=device, dtype=dtype, **_overrides(cell))
    B, T, D = cell.batch, cell.T, cell.dim
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, T, D, generator=gen, device=device, dtype=dtype)  # (B, T, D)
    mask = padding_mask(B, T, cell.pad_fraction, device)  # (B, T) or None
    T_out = module.out_len(T)
    flops = float(module.spec.flops(module.config, B, T, causal=cell.causal))
    params = list(module.parameters())
    causal = cell.causal

    def call():
        y, _ = module.forward_with_mask(x, mask, causal=causal)  # (B, T_out, D)
        return y

    call = compiled(call, cell)

    if cell.mode == "forward":
        module.eval()

        def step():
            with torch.no_grad():
                return call()

        return Step(step, sum(p.numel() for p in params), flops, lambda y: check_tensor("output", y, (B, T_out, D)))

    module.train()
    x.requires_grad_(True)
    grad_out = torch.randn(B, T_out, D, generator=gen, device=device, dtype=dtype)  # (B, T_out, D)

    def clear_grads():
        x.grad = None
        for p in params:
            p.grad = None

    def train_step():
        clear_grads()
        y = call()
        y.backward(grad_out)
        return y

    def train_check(y):
        check_tensor("output", y, (B, T_out, D))
        check_tensor("input gradient", x.grad, (B, T, D))
        for name, p in module.named_parameters():
            if p.grad is not None:
                check_tensor(f"gradient of {name}", p.grad)

    return Step(train_step, sum(p.numel() for p in params), 3.0 * flops, train_check, clear_grads)


def _build_model_step(cell: Cell, device: torch.device, dtype: torch.dtype) -> Step:
    from zoo.models import Encoder

    m = cell.model or {}
    vocab, classes, ffn = int(m.get("vocab", 512)), int(m.get("classes", 2)), int(m.get("ffn", 128))
    model = Encoder(
        mixer=cell.mixer, depth=cell.depth or 2, dim=cell.dim, heads=cell.heads, vocab=vocab, classes=classes,
        ffn=ffn, max_len=cell.T, mixer_overrides=_overrides(cell), device=device, dtype=dtype,
        dropout=float(m.get("dropout", 0.0)),
    )
    B, T, D = cell.batch, cell.T, cell.dim
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, vocab, (B, T), generator=gen, device=device)  # (B, T)
    labels = torch.randint(0, classes, (B,), generator=gen, device=device)  # (B,)
    mask = padding_mask(B, T, cell.pad_fraction, device)  # (B, T) or None
    flops = 2.0 * B * D * classes
    for block, T_l in zip(model.blocks, model.lengths(T)):
        T_next = block.mixer.out_len(T_l)
        flops += float(block.mixer.spec.flops(block.mixer.config, B, T_l, causal=cell.causal))
        flops += 4.0 * B * T_next * D * ffn
    n_params = sum(p.numel() for p in model.parameters())
    causal = cell.causal

    if cell.mode == "forward":
        model.eval()
        logits = compiled(lambda: model(tokens, mask, causal=causal), cell)  # (B, classes)

        def step():
            with torch.no_grad():
                return logits()

        return Step(step, n_params, flops, lambda y: check_tensor("logits", y, (B, classes)))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_of = compiled(lambda: model.loss(tokens, labels, mask, causal=causal), cell)  # the optimizer stays eager

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return Step(train_step, n_params, 3.0 * flops, lambda loss: check_tensor("loss", loss, ()),
                lambda: optimizer.zero_grad(set_to_none=True), keeps_state=True)  # AdamW's moments


def load_ref(ref: str) -> Any:
    """The object named by ``"pkg.module:name"`` or ``"path/file.py:name"`` (a file is imported
    once per process, as ``_zoo_builder_<stem>``)."""
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).resolve()
        mod_name = f"_zoo_builder_{path.stem}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def load_builder(ref: str | None) -> Callable[[Cell, torch.device, torch.dtype], Step]:
    """``None`` -> :func:`build_step`; otherwise :func:`load_ref`."""
    return build_step if not ref else load_ref(ref)


def build_decoder(cell: Cell, device: torch.device, dtype: torch.dtype) -> Decoder:
    """The registry's decode builder: the mixer's state API on a random prompt of T tokens
    (padded as ``cell.pad_fraction`` says), inputs built here, outside every timed region."""
    from zoo.registry import create_mixer

    module = create_mixer(cell.mixer, dim=cell.dim, heads=cell.heads, device=device, dtype=dtype, **_overrides(cell)).eval()
    B, T, D = cell.batch, cell.T, cell.dim
    gen = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randn(B, T, D, generator=gen, device=device, dtype=dtype)  # (B, T, D)
    x_t = torch.randn(B, 1, D, generator=gen, device=device, dtype=dtype)  # (B, 1, D): the new token
    mask = padding_mask(B, T, cell.pad_fraction, device)  # (B, T) or None

    def prefill():
        with torch.inference_mode():
            return module.prefill(prompt, module.init_state(B, device=device, dtype=dtype), mask)

    def step(state):
        with torch.inference_mode():
            return module.step(x_t, state)[0]

    spec = type(module).spec_for(module.config)
    return Decoder(prefill, step, lambda state: state.nbytes(), str(spec.state),
                   sum(p.numel() for p in module.parameters()), lambda y, shape: check_tensor("output", y, shape))


def declared_classes(mixer: str, config: dict[str, Any], *, decode: bool = False) -> dict[str, float | None]:
    """{"time": k, "memory": k, "class_from": T0} a mixer declares for this config
    (``TokenMixer.spec_for``; ``class_from``: the shortest T the classes describe, None for every T);
    with ``decode`` also "decode_time" and "decode_state" (per-token time and state bytes against the
    context length, both following ``spec.state``; None without a state API)."""
    from zoo.registry import get_config, get_mixer_class

    cls = get_mixer_class(mixer)
    spec = cls.spec_for(get_config(mixer, **config))
    out: dict[str, float | None] = {"time": spec.time.exponent, "memory": spec.memory.exponent,
                                    "class_from": spec.class_from}
    if decode:
        k_state = None if spec.state is None else spec.state.exponent
        out.update(decode_time=k_state, decode_state=k_state)
    return out

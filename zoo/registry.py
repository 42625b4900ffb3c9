"""Name -> mixer class registry: ``register``, ``create_mixer``, ``list_mixers``, ``get_spec``.

Mixers register themselves at import (``zoo/mixers/__init__.py`` imports one file per mixer).
Duplicate names raise; unknown names and unknown config keys raise with the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

import torch

from zoo.base import MixerConfig, MixerSpec, TokenMixer
from zoo.errors import ZooTypeError, ZooValueError

__all__ = ["register", "create_mixer", "list_mixers", "get_spec", "get_mixer_class", "get_config"]

_REGISTRY: dict[str, type[TokenMixer]] = {}


def register(cls: type[TokenMixer]) -> type[TokenMixer]:
    """Class decorator. Raises on a duplicate name (no warn-and-overwrite)."""
    spec = getattr(cls, "spec", None)
    if not isinstance(spec, MixerSpec):
        raise TypeError(f"register: {cls.__name__} has no `spec: MixerSpec` class attribute")
    config_cls = getattr(cls, "Config", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, MixerConfig)):
        raise TypeError(f"register: {cls.__name__}.Config must subclass MixerConfig")
    if spec.name in _REGISTRY:
        raise ValueError(
            f"register: a mixer named {spec.name!r} is already registered ({_REGISTRY[spec.name].__name__})"
        )
    _REGISTRY[spec.name] = cls
    return cls


def _ensure_loaded() -> None:
    import zoo.mixers  # noqa: F401  (side effect: registration)


def _unknown_name(name: Any) -> ZooValueError:
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ZooValueError(f"mixer: unknown name {name!r}.{hint} Known mixers: {', '.join(names)}")


def get_mixer_class(name: str) -> type[TokenMixer]:
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown_name(name)
    return _REGISTRY[name]


def get_spec(name: str) -> MixerSpec:
    """The spec of a registered mixer, without building it."""
    return get_mixer_class(name).spec


def get_config(name: str, **overrides: Any) -> MixerConfig:
    """Build the mixer's frozen config from its defaults and ``overrides``.

    Every given override is a value, ``None`` included (``sketch_size=None`` selects Skeinformer's
    ``int(4 ln N)`` mode); a key that is not given keeps the config default. Callers that hold
    "not given" as ``None`` (CLI options) must leave such keys out. Unknown keys raise, listing the
    valid ones.
    """
    config_cls = get_mixer_class(name).Config
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ZooValueError(
            f"{name}: unknown config key {', '.join(hints)}; valid keys: {', '.join(valid)}"
        )
    return config_cls(**overrides)


def create_mixer(
    name: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> TokenMixer:
    """Build a registered mixer: ``create_mixer("ponet", dim=512, heads=8)``.

    ``name``: a registered name (``list_mixers()``; the list is at the end of this docstring).
    ``overrides``: fields of the mixer's config (``dim``, ``heads`` and its own options); they,
    their defaults and meanings are listed by ``zoo info NAME``, ``get_mixer_class(name).Config``
    or ``zoo.base.config_fields(get_mixer_class(name).Config)``. A key that is not given keeps its
    default; ``None`` is a value (``create_mixer("skeinformer", sketch_size=None)``).
    ``device``/``dtype`` are passed to every parameter at construction (``device="meta"`` works;
    then ``to_empty(device=...)`` and ``reset_parameters()`` give a normally initialised module).

    Call contract: ``mixer(x, mask=None, *, causal=False)``, x (B, T, D), mask bool (B, T); extra
    keyword inputs are listed in ``spec.extra_inputs`` and the mixer's ``forward`` docstring. A
    mixer with ``spec.reduces_length`` returns ``out_len(T)`` tokens; ``forward_with_mask`` gives
    its output mask too.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ZooTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    config = get_config(name, **overrides)
    return get_mixer_class(name)(config, device=device, dtype=dtype)


def document_names() -> None:
    """Append the registered names to ``create_mixer.__doc__`` (so ``help`` shows them)."""
    _ensure_loaded()
    doc = create_mixer.__doc__ or ""
    marker = "\n    Registered mixers: "
    doc = doc.split(marker)[0].rstrip() + "\n" + marker + ", ".join(sorted(_REGISTRY)) + ".\n"
    create_mixer.__doc__ = doc


def list_mixers(pattern: str = "*", **filters: Any) -> list[str]:
    """Registered names matching a wildcard and spec fields: ``list_mixers("*former", causal=True)``."""
    _ensure_loaded()
    spec_fields = {f.name for f in dataclasses.fields(MixerSpec)}
    bad = [k for k in filters if k not in spec_fields]
    if bad:
        raise ZooValueError(f"list_mixers: unknown filter {', '.join(bad)}; valid: {', '.join(sorted(spec_fields))}")
    out = []
    for name in sorted(_REGISTRY):
        spec = _REGISTRY[name].spec
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        if all(getattr(spec, k) == v for k, v in filters.items()):
            out.append(name)
    return out

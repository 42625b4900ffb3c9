"""The cell grid of a sweep: mixer labels, modes, dtypes and :class:`Cell` (length and size parsers
in ``profiler/lengths.py``, presets in ``profiler/presets.py``, both re-exported here).

A *cell* is one measurement: (mixer + its config overrides, T, batch, dim, heads, dtype, device,
mode, scope). Everything here is pure Python over the registry's specs and configs; nothing
builds a module or touches a tensor, so planning a sweep is instant and errors surface before
anything is written.

Lengths (``parse_lengths``)::

    1k..16k         1024, 2048, 4096, 8192, 16384    (doubling from the start)
    1k..16k:x1.5    1024, 1536, 2304, ...            (geometric step, rounded)
    1k..4k:+1k      1024, 2048, 3072, 4096           (arithmetic step)
    512,2048,3000   a list; items may be ranges;  k = 1024, m = 1024**2, "1.5k" = 1536

Mixers (``parse_mixers``): ``softmax[impl=eager],ponet`` (config overrides in brackets; the label
is the name plus the sorted overrides) and wildcards over the registry (``'*former'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from profiler.lengths import parse_lengths, parse_size
from profiler.presets import PRESETS
from zoo.errors import ZooValueError

__all__ = [
    "Cell",
    "MixerChoice",
    "PRESETS",
    "DTYPES",
    "MODES",
    "ALL_MODES",
    "DECODE",
    "SCOPES",
    "parse_lengths",
    "parse_size",
    "parse_mixers",
    "parse_modes",
    "format_label",
    "plan_cells",
]

MODES = ("forward", "train")
DECODE = "decode"  # generation: prefill T tokens, then time per new token (profiler/decode.py)
ALL_MODES = (*MODES, DECODE)
SCOPES = ("mixer", "model")
# user spelling -> torch dtype attribute name
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp64": "float64",
    "float64": "float64",
}
_CANONICAL_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
def parse_modes(modes: str | Iterable[str]) -> tuple[str, ...]:
    items = [m.strip() for m in modes.split(",")] if isinstance(modes, str) else [str(m) for m in modes]
    out = []
    for m in items:
        if m == "both":
            out.extend(MODES)
        elif m in ALL_MODES:
            out.append(m)
        else:
            raise ZooValueError(f"mode: expected forward, train, both or decode, got {m!r}")
    if not out:
        raise ZooValueError("mode: expected forward, train, both or decode, got nothing")
    return tuple(dict.fromkeys(out))


def canonical_dtype(dtype: str) -> str:
    key = str(dtype).replace("torch.", "").lower()
    if key not in DTYPES:
        raise ZooValueError(f"dtype: expected one of fp32, bf16, fp16, fp64, got {dtype!r}")
    return _CANONICAL_DTYPE[DTYPES[key]]


# --------------------------------------------------------------------------- mixers and labels
@dataclass(frozen=True)
class MixerChoice:
    """A registry name plus config overrides; ``registered`` is False for preset names not (yet) in
    the registry, which become ``unsupported`` cells instead of errors."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    registered: bool = True

    @property
    def label(self) -> str:
        return format_label(self.name, dict(self.overrides))


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_label(name: str, overrides: dict[str, Any]) -> str:
    """``softmax[impl=eager]``: the name plus the overrides sorted by key (the name alone if none)."""
    if not overrides:
        return name
    inner = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(overrides.items()))
    return f"{name}[{inner}]"


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ZooValueError(f"mixers: unbalanced ']' in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ZooValueError(f"mixers: expected a closing ']' in {text!r}")
    parts.append("".join(cur))
    return parts


def _coerce(name: str, key: str, text: str, default: Any) -> Any:
    """Turn an override's text into the config field's type (taken from the field's default)."""
    low = text.strip().lower()
    if isinstance(default, bool):
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ZooValueError(f"{name}: {key}: expected true or false, got {text!r}")
    if isinstance(default, int):
        try:
            return int(low)
        except ValueError:
            raise ZooValueError(f"{name}: {key}: expected an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(low)
        except ValueError:
            raise ZooValueError(f"{name}: {key}: expected a number, got {text!r}") from None
    if isinstance(default, str):
        return text.strip()
    # no usable default (None, tuples): JSON literal when it parses, else the text
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def parse_mixers(text: str | Iterable[str] | None, *, allow_unregistered: bool = False) -> list[MixerChoice]:
    """``"softmax[impl=eager],ponet"`` (or a list of such items) -> choices, in the given order.

    Unknown names raise the registry's did-you-mean error unless ``allow_unregistered`` (presets).
    ``None`` or ``"all"`` means every registered mixer.
    """
    from zoo.registry import get_mixer_class, list_mixers

    if text is None:
        return [MixerChoice(n) for n in list_mixers()]
    items = _split_top(text) if isinstance(text, str) else [s for t in text for s in _split_top(str(t))]
    out: list[MixerChoice] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise ZooValueError(f"mixers: expected a mixer name between commas, got an empty item in {text!r}")
        if item == "all":
            out.extend(MixerChoice(n) for n in list_mixers())
            continue
        m = re.fullmatch(r"([^\[\]]+?)\s*(?:\[(.*)\])?", item)
        if not m:
            raise ZooValueError(f"mixers: expected name or name[key=value,...], got {item!r}")
        name, inner = m.group(1).strip(), m.group(2)
        if any(c in name for c in "*?["):
            names = list_mixers(name)
            if not names:
                raise ZooValueError(f"mixers: no registered mixer matches {name!r}; known: {', '.join(list_mixers())}")
            if inner:
                raise ZooValueError(f"mixers: overrides need one mixer name, got the wildcard {name!r}")
            out.extend(MixerChoice(n) for n in names)
            continue
        try:
            cls = get_mixer_class(name)
        except ZooValueError:
            if not allow_unregistered:
                raise
            out.append(MixerChoice(name, registered=False))
            continue
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        nullable = {f.name for f in dataclasses.fields(cls.Config) if "None" in str(f.type)}
        overrides: dict[str, Any] = {}
        for pair in _split_top(inner) if inner else []:
            key, eq, value = pair.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ZooValueError(f"{name}: overrides: expected key=value, got {pair.strip()!r} in {item!r}")
            if key in ("dim", "heads"):
                raise ZooValueError(f"{name}: {key}: set it for the whole sweep with --{key}, not per mixer")
            if key not in defaults:
                # the registry's message: unknown key, did-you-mean, valid keys
                from zoo.registry import get_config

                get_config(name, **{key: value})
            if key in nullable and value.strip().lower() in ("none", "null"):
                overrides[key] = None  # a chosen value (e.g. sketch_size=none), not "not given"
                continue
            overrides[key] = _coerce(name, key, value, defaults[key])
        out.append(MixerChoice(name, tuple(sorted(overrides.items()))))
    # the same label twice would be measured twice: keep the first
    seen, unique = set(), []
    for c in out:
        if c.label not in seen:
            seen.add(c.label)
            unique.append(c)
    return unique


# --------------------------------------------------------------------------- cells
def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One measurement. ``config`` is the mixer's full config (dim/heads included) as JSON data."""

    label: str
    mixer: str
    overrides: dict
    config: dict
    scope: str
    mode: str
    T: int
    batch: int
    dim: int
    heads: int
    depth: int | None
    dtype: str
    device: str
    causal: bool = False
    model: dict | None = None  # {"vocab", "classes", "ffn"} in model scope
    unsupported: str | None = None  # decided while planning (not registered, no causal variant)
    extra: dict = field(default_factory=dict)  # builder-specific data (tests), part of the key
    pad_fraction: float = 0.0  # the last F of every sequence is padding (the mixer gets the mask)
    compile: str | None = None  # torch.compile backend of the step ("inductor"), None = eager

    def identity(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "config": self.config,
            "scope": self.scope,
            "mode": self.mode,
            "T": self.T,
            "batch": self.batch,
            "dim": self.dim,
            "heads": self.heads,
            "depth": self.depth,
            "dtype": self.dtype,
            "device": self.device,
            "causal": self.causal,
            "model": self.model,
            "extra": self.extra or None,
            # only when set: cells without padding keep the keys of files written before it existed
            **({"pad_fraction": self.pad_fraction} if self.pad_fraction else {}),
            **({"compile": self.compile} if self.compile else {}),
        }

    @property
    def key(self) -> str:
        blob = json.dumps(_jsonable(self.identity()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Cell":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def title(self) -> str:
        return f"{self.label} T={self.T} {self.mode}"


def plan_cells(
    choices: list[MixerChoice],
    lengths: list[int],
    modes: tuple[str, ...],
    *,
    scope: str,
    batch: int,
    dim: int,
    heads: int,
    depth: int | None,
    dtype: str,
    device: str,
    causal: bool = False,
    model: dict | None = None,
    pad_fraction: float = 0.0,
    compile: str | None = None,
) -> list[Cell]:
    """The grid, lengths outermost and mixers interleaved within a length (drift hits all alike).

    Configs are built here so impossible settings (heads not dividing dim, a bad override value)
    raise the registry's error before anything runs.
    """
    from zoo.registry import get_config, get_spec

    configs: dict[str, tuple[dict, str | None]] = {}
    no_state: dict[str, str | None] = {}  # label -> why it cannot decode (None: it can)
    for c in choices:
        if not c.registered:
            configs[c.label] = ({**dict(c.overrides), "dim": dim, "heads": heads}, f"{c.name}: not a registered mixer in this build")
            continue
        config = get_config(c.name, **dict(c.overrides), dim=dim, heads=heads)
        unsupported = None
        spec = get_spec(c.name)
        if causal and not spec.causal:
            unsupported = f"{c.name}: no causal variant (spec.causal=False)"
        if not spec.causal:
            no_state[c.label] = f"{c.name}: no causal variant, so no generation state (spec.causal=False)"
        elif spec.state is None:
            no_state[c.label] = f"{c.name}: no generation state declared (spec.state=None)"
        configs[c.label] = (_jsonable(dataclasses.asdict(config)), unsupported)
    cells = []
    for T in lengths:
        for c in choices:
            config, unsupported = configs[c.label]
            for mode in modes:
                cells.append(
                    Cell(
                        label=c.label,
                        mixer=c.name,
                        overrides=_jsonable(dict(c.overrides)),
                        config=config,
                        scope=scope,
                        mode=mode,
                        T=T,
                        batch=batch,
                        dim=dim,
                        heads=heads,
                        depth=depth if scope == "model" else None,
                        dtype=dtype,
                        device=device,
                        causal=causal or mode == DECODE,  # generation is causal
                        model=model if scope == "model" else None,
                        unsupported=unsupported or (no_state.get(c.label) if mode == DECODE else None),
                        pad_fraction=float(pad_fraction),
                        compile=compile or None,
                    )
                )
    return cells

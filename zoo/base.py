"""The mixer contract: spec (pure data), config (frozen dataclass), module base and input checks.

Every mixer in the zoo is a :class:`TokenMixer` subclass with two class attributes:

* ``spec``: a :class:`MixerSpec` (paper, complexity classes, capabilities, FLOP formula),
  readable without building a module;
* ``Config``: a frozen dataclass derived from :class:`MixerConfig` (``dim``, ``heads`` plus the
  mixer's own hyper-parameters, each with a one-line ``help``), with a ``tiny()`` preset.

and one call contract::

    y = mixer(x, mask=None, *, causal=False)      # x (B, T, D) -> y (B, out_len(T), D)

``mask`` is bool (B, T), True = real token. Padded output rows are exactly zero; a fully padded
sequence gives zeros, never NaN; any T >= 1 works.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from zoo.errors import ZooTypeError, ZooValueError
from zoo.state import MixerState, StateSize

__all__ = [
    "Complexity",
    "MixerSpec",
    "MixerState",
    "StateSize",
    "MixerConfig",
    "TokenMixer",
    "cfg",
    "check_inputs",
    "config_fields",
]


class Complexity(str, enum.Enum):
    """Asymptotic class in the sequence length T with every hyper-parameter fixed."""

    LINEAR = "O(T)"
    LOGLINEAR = "O(T log T)"
    QUADRATIC = "O(T^2)"

    @property
    def exponent(self) -> float:
        """The exponent a log-log fit over long lengths should find (T log T reads as ~1.05)."""
        return {"O(T)": 1.0, "O(T log T)": 1.05, "O(T^2)": 2.0}[self.value]

    def __str__(self) -> str:  # so f-strings and tables show "O(T)" rather than the enum name
        return self.value


class FlopFormula(Protocol):
    """``flops(config, B, T, causal=False)`` -> forward FLOPs of the whole mixer (projections
    included), a multiply-add counted as 2 FLOPs. A training step is reported as 3x this."""

    def __call__(self, config: Any, B: int, T: int, causal: bool = False) -> float: ...


@dataclass(frozen=True)
class MixerSpec:
    """Pure data about a mixer: what the profiler, reports, CLI and contract tests read."""

    name: str  # registry key, lowercase_snake, = file name
    title: str  # paper title
    arxiv: str | None  # arXiv id, e.g. "2110.02442"
    year: int
    time: Complexity  # time class in T, hyper-parameters fixed
    memory: Complexity  # extra (activation) memory class in T
    flops: FlopFormula  # analytic forward FLOPs: flops(config, B, T, causal=False)
    cost_note: str = ""  # the honest formula, e.g. "O(T·w·D), w = window"
    causal: bool = False  # may be called with causal=True
    key_padding_mask: bool = True  # padded tokens are excluded from mixing (C3 padding invariance)
    reduces_length: bool = False  # output has out_len(T) tokens (forward_with_mask gives its mask)
    stochastic: bool = False  # draws randomness (own seeded generator)
    # a hard choice (top-k ranking) on computed scores: bf16/fp16 can flip it, so its low-precision
    # output is not round-off of the fp32 one (the docstring quantifies the difference)
    precision_sensitive: bool = False
    approximates_softmax: bool = False  # fidelity vs exact softmax with the same q/k/v/out_proj
    deviations: str = ""  # where the zoo differs from the paper / official code
    extra_inputs: tuple[str, ...] = ()  # optional forward kwargs, e.g. ("segment_ids",)
    # config overrides for the fidelity panel: branches that are not part of the softmax
    # approximation (e.g. Nystrom's conv skip) are switched off there, and the label says so
    fidelity_overrides: tuple[tuple[str, Any], ...] = ()
    # generation state (init_state / prefill / step) of a causal mixer: its size in the context
    # length T (constant, O(w), O(T)); None = no state API (every non-causal mixer)
    state: StateSize | None = None
    # the shortest T the two classes describe, None: every T. Below it the mixer runs another
    # algorithm (bigbird: full attention for T <= (5 + 2r)·b), so a fit of its class leaves it out
    class_from: int | None = None

    def summary(self) -> dict[str, Any]:
        """A flat dict for tables (no callables)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "flops"}
        out["time"] = str(self.time)
        out["memory"] = str(self.memory)
        out["state"] = None if self.state is None else str(self.state)
        return out


def cfg(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with a one-line meaning (shown by ``zoo info``)."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class MixerConfig:
    """Fields shared by every mixer. Subclasses add their own, each declared with :func:`cfg`."""

    dim: int = cfg(256, "model width D (input and output channels)")
    heads: int = cfg(4, "number of heads h; head width p = dim / heads")

    def __post_init__(self) -> None:
        for name in ("dim", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ZooValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ZooValueError(
                f"heads: expected a divisor of dim={self.dim}, got heads={self.heads}"
            )
        p = getattr(self, "attention_dropout", 0.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ZooValueError(f"attention_dropout: expected a probability in [0, 1), got {p!r}")
        self.validate()

    def validate(self) -> None:
        """Per-mixer checks; raise ZooValueError naming the field, what was expected and given."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @classmethod
    def tiny(cls) -> "MixerConfig":
        """Smallest config that keeps the mechanism non-trivial (tests, smoke runs)."""
        return cls(dim=16, heads=2)


def attention_dropout_field() -> Any:
    """The ``attention_dropout`` config field of mixers with attention weights (one definition)."""
    return cfg(0.0, "dropout probability on the attention weights, in training only (0 = none)")


def attention_dropout_p(mixer: "TokenMixer") -> float:
    """The dropout probability a mixer applies now: its config's in training, 0 in eval."""
    return float(mixer.config.attention_dropout) if mixer.training else 0.0


def config_fields(config_cls: type) -> list[dict[str, Any]]:
    """[{name, type, default, help}] for ``zoo info`` and the README table."""
    rows = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append(
            {"name": f.name, "type": str(f.type), "default": default, "help": f.metadata.get("help", "")}
        )
    return rows


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ZooValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ZooValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
        raise ZooValueError(f"{name}: expected a number in [{lo}, {hi}], got {value!r}")


# re-exported for configs' validate()
check_positive_int = _check_positive_int
check_choice = _check_choice
check_range = _check_range


class TokenMixer(nn.Module):
    """Base of every mixer: holds the config, exposes ``spec`` and the length contract.

    Mixers share *math* through :mod:`zoo.functional`, never through subclassing one another;
    this base only carries the contract.
    """

    spec: ClassVar[MixerSpec]
    Config: ClassVar[type[MixerConfig]]

    def __init__(self, config: MixerConfig):
        super().__init__()
        if not isinstance(config, self.Config):
            raise ZooTypeError(
                f"config: expected {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def heads(self) -> int:
        return self.config.heads

    def out_len(self, T: int) -> int:
        """Output length for input length T (T unless ``spec.reduces_length``)."""
        return T

    @classmethod
    def spec_for(cls, config: MixerConfig) -> MixerSpec:
        """The spec as it holds for ``config``: a mixer whose classes or flags depend on a config
        field (softmax's ``impl``) overrides this; the default is ``cls.spec`` for every config."""
        return cls.spec

    def forward_with_mask(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output (B, out_len(T), D), its keep-mask): the mask is unchanged unless the mixer
        reduces the length (then it overrides this and returns the pooled mask)."""
        return self(x, mask, causal=causal), mask

    def reset_parameters(self) -> None:
        """Initialise every parameter and buffer as construction does.

        FSDP-style meta init: ``create_mixer(..., device="meta").to_empty(device=d)`` leaves
        uninitialised memory; ``reset_parameters()`` then fills it. Submodules (Linear, ...) reset
        themselves, then the mixer's own :meth:`_init_weights` runs (custom inits, buffers, the
        seeded generators): under the same global seed the result equals a fresh construction's
        ``reset_parameters()``, and it has the statistics of a normal construction.
        """
        for module in self.modules():
            if module is not self and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        with torch.no_grad():
            self._init_weights()

    def _init_weights(self) -> None:
        """The mixer's own initialisation after its submodules' defaults (``__init__`` calls it too)."""

    # -- generation: the recurrent-state API (zoo/state.py documents the mask semantics) --------

    def init_state(self, batch: int, device=None, dtype=None) -> MixerState:
        """The empty generation state for ``batch`` sequences (device/dtype default to the
        parameters'). Raises for a mixer without a causal variant or a declared state."""
        spec = self._state_spec("init_state")
        check_positive_int("batch", batch)
        ref = next(iter(self.parameters()), None)
        device = ref.device if device is None and ref is not None else torch.device(device or "cpu")
        device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report it
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.get_default_dtype())
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ZooTypeError(f"{spec.name}: dtype: expected a floating torch.dtype, got {dtype!r}")
        state = MixerState(mixer=spec.name, batch=batch, device=device, dtype=dtype)
        state.tensors = self._state_tensors(batch, device, dtype)
        return state

    def prefill(
        self, x: torch.Tensor, state: MixerState, mask: torch.Tensor | None = None, *, chunk_size: int = 1024
    ) -> tuple[torch.Tensor, MixerState]:
        """Consume a prompt x (B, T, D) after what ``state`` holds, ``chunk_size`` tokens at a
        time: (outputs (B, T, D) equal to the causal forward's on the whole sequence, state)."""
        self._check_state_call("prefill", x, state, mask)
        check_positive_int("chunk_size", chunk_size)
        outs = []
        for s in range(0, x.shape[1], chunk_size):
            xs = x[:, s : s + chunk_size]  # (B, n, D)
            ms = None if mask is None else mask[:, s : s + chunk_size]  # (B, n)
            y = self._advance(xs, ms, state)  # (B, n, D)
            state.position += xs.shape[1]
            outs.append(zero_padded(y, ms))
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), state

    def step(
        self, x_t: torch.Tensor, state: MixerState, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MixerState]:
        """One new token x_t (B, 1, D) (mask (B, 1) optional): (its output (B, 1, D), state)."""
        name = self.spec.name
        if isinstance(x_t, torch.Tensor) and (x_t.dim() != 3 or x_t.shape[1] != 1):
            raise ZooValueError(f"{name}: x_t: expected shape (B, 1, D) (one new token), got {tuple(x_t.shape)}")
        return self.prefill(x_t, state, mask)

    def _state_spec(self, what: str) -> MixerSpec:
        spec = type(self).spec_for(self.config)
        if not spec.causal:
            raise ZooValueError(
                f"{spec.name}: {what}: generation needs a causal mixer; this one has no causal "
                "variant (spec.causal=False)"
            )
        if spec.state is None:
            raise ZooValueError(f"{spec.name}: {what}: this mixer declares no generation state (spec.state=None)")
        return spec

    def _check_state_call(self, what: str, x: Any, state: Any, mask: Any) -> None:
        spec = self._state_spec(what)
        check_inputs(self, x, mask, causal=True)
        if not isinstance(state, MixerState):
            raise ZooTypeError(f"{spec.name}: state: expected a MixerState from init_state(), got {type(state).__name__}")
        if state.mixer != spec.name:
            raise ZooValueError(f"{spec.name}: state: expected a state made by {spec.name}.init_state(), got one of {state.mixer}")
        if x.shape[0] != state.batch or x.dtype != state.dtype or x.device != state.device:
            raise ZooValueError(
                f"{spec.name}: x: expected batch {state.batch}, dtype {state.dtype} and device {state.device} "
                f"(the state's), got batch {x.shape[0]}, dtype {x.dtype}, device {x.device}"
            )

    def _state_tensors(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Hook: the empty state's tensors (a mixer with ``spec.state`` overrides it)."""
        raise NotImplementedError(f"{self.spec.name}: _state_tensors is not implemented")

    def _advance(self, x: torch.Tensor, mask: torch.Tensor | None, state: MixerState) -> torch.Tensor:
        """Hook: consume x (B, n, D) starting at ``state.position``, replace the entries of
        ``state.tensors`` it updates (never change a tensor in place, except cache slots past the
        position: ``MixerState.snapshot`` relies on it) and return the n outputs (B, n, D); the base
        zeroes padded rows and moves the position."""
        raise NotImplementedError(f"{self.spec.name}: _advance is not implemented")

    def extra_repr(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return fields


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The floating dtype of a module's first floating parameter or buffer (None: it has none)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for a device type; False for types autocast does not know (meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return False


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a mixer returns: x's, or autocast's lower precision when autocast is on for x's device
    (what a mixer whose last op is a Linear returns under autocast)."""
    if autocast_on(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def check_inputs(mixer: TokenMixer, x: Any, mask: Any = None, causal: bool = False) -> None:
    """Loud, specific errors at the mixer boundary (the first line of every ``forward``)."""
    name = mixer.spec.name
    if not isinstance(x, torch.Tensor):
        raise ZooTypeError(f"{name}: x: expected a torch.Tensor of shape (B, T, D), got {type(x).__name__}")
    if x.dim() != 3:
        raise ZooValueError(
            f"{name}: x: expected shape (B, T, D) with D={mixer.dim}, got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ZooTypeError(f"{name}: x: expected a floating-point tensor, got dtype {x.dtype}")
    expected = module_dtype(mixer)
    if expected is not None and x.dtype != expected and not autocast_on(x.device.type):
        raise ZooTypeError(
            f"{name}: x: expected dtype {expected} (the module's; cast x or the module, or run under "
            f"torch.autocast), got {x.dtype}"
        )
    B, T, D = x.shape
    if D != mixer.dim:
        raise ZooValueError(f"{name}: x: expected last dimension D={mixer.dim}, got shape {tuple(x.shape)}")
    if T < 1 or B < 1:
        raise ZooValueError(f"{name}: x: expected B >= 1 and T >= 1, got shape {tuple(x.shape)}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ZooTypeError(f"{name}: mask: expected a bool tensor of shape (B, T)=({B}, {T}), got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise ZooTypeError(
                f"{name}: mask: expected dtype torch.bool (True = real token), got {mask.dtype}"
            )
        if tuple(mask.shape) != (B, T):
            raise ZooValueError(f"{name}: mask: expected shape (B, T)=({B}, {T}), got {tuple(mask.shape)}")
        if mask.device != x.device:
            raise ZooValueError(f"{name}: mask: expected device {x.device} (same as x), got {mask.device}")
    if not isinstance(causal, bool):
        raise ZooTypeError(f"{name}: causal: expected a bool, got {type(causal).__name__}")
    if causal and not mixer.spec.causal:
        raise ZooValueError(
            f"{name}: causal: expected False, this mixer has no causal variant (spec.causal=False)"
        )


def keep_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The bool (B, T) keep-mask, all True when ``mask`` is None."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask


def zero_padded(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """C2: padded output rows exactly zero (the last op of every forward)."""
    if mask is None:
        return y
    return y * mask.unsqueeze(-1).to(y.dtype)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def log2(x: float) -> float:
    return math.log2(max(x, 1.0))

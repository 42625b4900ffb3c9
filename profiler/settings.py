"""A sweep's settings, validated once: :class:`SweepSettings` (how cells run and where records go)
and :func:`plan_profile` (a preset plus explicit options -> the planned cells and the settings).

Every user error raises :class:`zoo.errors.ZooValueError` naming the option, before anything is
written; the sweep, the executors and the cell processes trust what they are given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from profiler.cases import MODES, PRESETS, SCOPES, Cell, canonical_dtype, parse_lengths, parse_mixers, parse_modes, parse_size, plan_cells
from profiler.heap import CPU_HEAP_CHOICES
from zoo.errors import ZooValueError

__all__ = ["SweepSettings", "plan_profile", "resolve_device", "default_memory_budget", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0  # seconds per cell


CONTENTION_PROBE = "profiler.contention:ContentionProbe"  # the load probe a CPU sweep times under


def _positive_int(name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ZooValueError(f"{name}: expected a positive integer, got {v!r}")


def _positive_number(name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ZooValueError(f"{name}: expected a positive number of seconds, got {v!r}")


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs its cells; ``info`` holds the planning settings for the header."""

    out: str
    isolate: bool = True
    executor: str | None = None  # fork | spawn | inline | ray | submitit; None: by device
    executor_options: dict = field(default_factory=dict)  # ray_address, slurm_partition, ... (executors.make_executor)
    timeout: float | None = DEFAULT_TIMEOUT  # seconds per cell
    memory_budget: int | None = None  # bytes
    threads: int | str | None = None  # None: torch's default; "auto": free cores (profiler.contention)
    time_budget: float = 2.0  # seconds of timed calls per cell (per round)
    rounds: int = 1  # processes per cell, interleaved within a length (profiler.rounds)
    interleave: bool = False  # a last pass times the sweep's cells in turn in one process (profiler.interleave)
    baseline: str | None = None  # the end table's ratios
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    builder: str | None = None  # reference to a builder; None: the registry's
    predict: bool = True  # the fake pass (predicted peak, counted FLOPs)
    cpu_heap: str = "managed"
    probe: str | None = None  # reference to a load-probe factory (timing.LoadProbe), None: none
    declared: dict = field(default_factory=dict)  # label -> {"time": k, "memory": k, "class_from": T0}
    command: list | None = None
    info: dict = field(default_factory=dict)  # the planning settings (lengths, mixers, ...)

    def __post_init__(self) -> None:
        _positive_number("timeout", self.timeout, allow_none=True)
        _positive_number("time budget", self.time_budget)
        _positive_int("rounds", self.rounds)
        if self.threads != "auto" and not (self.threads is None or (isinstance(self.threads, int) and not isinstance(
                self.threads, bool) and self.threads >= 1)):
            raise ZooValueError(f"threads: expected a positive integer or 'auto', got {self.threads!r}")
        if self.memory_budget is not None:
            _positive_int("memory budget", self.memory_budget)
        if self.cpu_heap not in CPU_HEAP_CHOICES:
            raise ZooValueError(f"cpu heap: expected one of {', '.join(CPU_HEAP_CHOICES)}, got {self.cpu_heap!r}")
        from profiler.executors import EXECUTORS

        if self.executor is not None and self.executor not in EXECUTORS:
            raise ZooValueError(f"executor: expected one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.interleave and self.rounds > 1:
            raise ZooValueError(f"rounds: expected 1 with --interleave (the interleaved pass replaces rounds: every "
                                f"cell is timed in turn with the others in one process), got {self.rounds}")
        if self.interleave and self.executor in ("ray", "submitit"):
            raise ZooValueError(f"interleave: expected --executor fork, spawn or inline (the cells are timed in turn "
                                f"in one process on this machine), got --executor {self.executor}")
        if self.rounds > 1 and self.executor in ("ray", "submitit"):
            raise ZooValueError(f"rounds: expected 1 with --executor {self.executor} (rounds interleave the cells of "
                                f"one length on one machine: fork, spawn or inline), got {self.rounds}")

    def header(self, threads: int, executor: str, device: str) -> dict[str, Any]:
        """The header's ``settings``."""
        return {
            **self.info, "isolate": self.isolate, "timeout_s": self.timeout, "memory_budget_bytes": self.memory_budget,
            "threads": threads, "time_budget_s": self.time_budget, "rounds": self.rounds,
            "interleave": self.interleave, "baseline": self.baseline, "resume": self.resume,
            "cpu_heap": self.cpu_heap if not device.startswith("cuda") else None, "executor": executor,
        }

    def class_from(self, label: str) -> int | None:
        """The shortest T the label's declared classes describe (None: every T), for its records."""
        return self.declared.get(label, {}).get("class_from")

    def cell_opts(self, threads: int) -> dict[str, Any]:
        """What a cell process needs (JSON data)."""
        return {"threads": threads, "time_budget_s": self.time_budget, "memory_budget_bytes": self.memory_budget,
                "predict": self.predict, "builder": self.builder, "timeout_s": self.timeout,
                "cpu_heap": self.cpu_heap, "probe": self.probe}


def resolve_device(device: str) -> str:
    import torch

    dev = str(device).strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev == "cuda" or dev.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ZooValueError(
                f"device: expected an available CUDA device, got {device!r} but torch {torch.__version__} sees no GPU"
            )
        if ":" in dev:
            try:
                index = int(dev.split(":", 1)[1])
            except ValueError:
                raise ZooValueError(f"device: expected cuda or cuda:<index>, got {device!r}") from None
            if not 0 <= index < torch.cuda.device_count():
                raise ZooValueError(f"device: expected cuda:0..cuda:{torch.cuda.device_count() - 1}, got {device!r}")
        return dev
    raise ZooValueError(f"device: expected auto, cpu or cuda, got {device!r}")


def default_memory_budget(device: str) -> int | None:
    """90% of the free memory: MemAvailable on CPU, free GPU memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(0.9 * free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(0.9 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return None


def _preset(name: str | None) -> dict[str, Any]:
    name = name or "default"
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ZooValueError(f"preset: unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _shape(p: dict, scope, batch, dim, heads, depth, ffn, vocab, classes) -> dict[str, Any]:
    def pick(value, key, default=None):
        return value if value is not None else p.get(key, default)

    scope = pick(scope, "scope", "mixer")
    if scope not in SCOPES:
        raise ZooValueError(f"scope: expected mixer or model, got {scope!r}")
    out = {"scope": scope, "batch": pick(batch, "batch", 1), "dim": pick(dim, "dim", 256),
           "heads": pick(heads, "heads", 4), "depth": None, "model": None}
    for nm in ("batch", "dim", "heads"):
        _positive_int(nm, out[nm])
    if scope == "model":
        out["depth"] = pick(depth, "depth", 2)
        out["model"] = {"vocab": pick(vocab, "vocab", 512), "classes": pick(classes, "classes", 2),
                        "ffn": pick(ffn, "ffn", 128)}
        for nm, v in (("depth", out["depth"]), *out["model"].items()):
            _positive_int(nm, v)
        if p.get("dropout"):  # only a preset sets it (absent: 0, so existing cell keys are unchanged)
            out["model"]["dropout"] = p["dropout"]
    return out


def _pad_fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise ZooValueError(f"pad fraction: expected a number in [0, 1), got {v!r}")
    return float(v)


def _compile_backend(v: Any) -> str | None:
    """``--compile``: True -> "inductor"; a backend name as given; False/None -> eager (None)."""
    if v is None or v is False:
        return None
    if v is True:
        return "inductor"
    import torch._dynamo

    if not isinstance(v, str) or v not in torch._dynamo.list_backends(exclude_tags=()):
        raise ZooValueError(f"compile: expected a torch.compile backend ({', '.join(torch._dynamo.list_backends())}), got {v!r}")
    return v


def plan_profile(
    *, mixers=None, lengths=None, modes=None, scope=None, preset=None, batch=None, dim=None, heads=None,
    depth=None, ffn=None, vocab=None, classes=None, dtype: str = "fp32", device: str = "auto", causal: bool = False,
    pad_fraction: float = 0.0, compile: str | bool | None = None, out: str | os.PathLike = "runs/profile.jsonl", memory_budget=None, threads=None,
    time_budget=None, contention: bool = True, **run: Any,
) -> tuple[list[Cell], SweepSettings]:
    """Cells and settings from a preset ("default" when none) and explicit options (which win).

    ``contention`` (CPU only): a pre-flight check of the machine before the sweep and a load probe
    around every timing sample (:mod:`profiler.contention`); contended samples are retaken.

    ``run``: the other :class:`SweepSettings` fields (isolate, timeout, baseline, resume, ...).
    """
    from profiler.builders import declared_classes

    p = _preset(preset)
    shape = _shape(p, scope, batch, dim, heads, depth, ffn, vocab, classes)
    mode_tuple = parse_modes(modes if modes is not None else p.get("modes", MODES))
    length_list = parse_lengths(lengths if lengths is not None else p.get("lengths"))
    dev = resolve_device(device)
    dtype_name = canonical_dtype(dtype)
    pad = _pad_fraction(pad_fraction)
    backend = _compile_backend(compile)
    if "decode" in mode_tuple and (shape["scope"] != "mixer" or backend):
        got = f"--scope {shape['scope']}" if shape["scope"] != "mixer" else f"--compile {backend}"
        raise ZooValueError(f"mode: decode runs the mixer's state API eagerly in mixer scope, got {got}")
    choices = parse_mixers(mixers if mixers is not None else p.get("mixers"),
                           allow_unregistered=mixers is None and preset is not None)
    if not choices:
        raise ZooValueError("mixers: expected at least one mixer, got none")
    cells = plan_cells(choices, length_list, mode_tuple, dtype=dtype_name, device=dev, causal=bool(causal),
                       pad_fraction=pad, compile=backend, **shape)
    declared = {}
    for c in cells:
        if c.label not in declared and not c.unsupported:
            declared[c.label] = declared_classes(c.mixer, {k: v for k, v in c.config.items()}, decode="decode" in mode_tuple)
    info = {"lengths": length_list, "mixers": [c.label for c in choices], "modes": list(mode_tuple), **shape,
            "dtype": dtype_name, "device": dev, "causal": bool(causal), "pad_fraction": pad, "compile": backend, "preset": preset}
    threads = threads if threads is not None else p.get("threads")
    t_budget = time_budget if time_budget is not None else p.get("time_budget", 2.0)
    budget = parse_size(memory_budget) if memory_budget is not None else default_memory_budget(dev)
    if contention and dev == "cpu" and "probe" not in run:
        run["probe"] = CONTENTION_PROBE
    settings = SweepSettings(out=str(out), memory_budget=budget, threads=threads, time_budget=t_budget,
                             declared=declared, info=info, **run)
    return cells, settings


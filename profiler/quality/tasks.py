"""Synthetic quality tasks generated on the fly from a seed (no download), each with a chance level.

Every task maps ``(n, T, numpy Generator)`` to a :class:`Split`: ``tokens`` int64 (n, T),
``mask`` bool (n, T) (True = real token) and ``labels``: int64 (n,) for sequence tasks, or
(n, T) with -100 at unscored positions for token tasks (one prediction per scored position).
Token 0 is padding / blank in every task.

* ``mqar`` -- multi-query associative recall (Zoology's semantics). The first ``2K`` tokens are
  key-value pairs ``k1 v1 k2 v2 ...``; keys are ``K`` distinct draws from the key half of the
  vocabulary, values are drawn with replacement from the value half. Each key is queried once in
  the rest of the sequence, at a slot drawn without replacement with probability proportional to
  ``(slot + 1) ** (alpha - 1)`` (Zoology's power law: most queries come soon after the context,
  a few far away). The label *at the query key's own position* is its value; every other position
  is blank. So the answer never appears at or after the query position: a bidirectional mixer
  cannot copy it and must retrieve it from the context. Chance: ``1 / num_values``.
* ``selective_copy`` -- MAD's selective copying. ``n`` data tokens sit at random (sorted)
  positions among blanks in the first ``T - n`` positions; the last ``n`` positions hold a copy
  marker and are labelled with the data tokens in order. Chance: ``1 / num_data``.
* ``listops`` -- the LRA ListOps grammar: nested ``[MAX``, ``[MIN``, ``[MED``, ``[SM`` (sum mod
  10) over digits, closed by ``]``, label = the value (10 classes). Trees are drawn with LRA's
  branching probability and argument counts inside a budget of ``T`` tokens, so lengths grow
  with T up to T; shorter sequences are padded. Chance: the majority class of the scored split
  (the value distribution is skewed; 1/10 would flatter a constant guess).
* ``ends`` -- pure long-range dependency: every token is one of ``C`` symbols and the label is
  ``C * first + last`` (``C**2`` classes): only the tokens at positions 0 and T-1 matter, the
  middle is the same alphabet (distractors), so the distance to bridge is T-1. Chance: ``1/C**2``.

The vocabulary is fixed per task (not per T), so a model's size does not depend on T.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from zoo.errors import ZooValueError

__all__ = ["Split", "Task", "MQAR", "SelectiveCopy", "ListOps", "Ends", "TASKS", "make_task", "task_names",
           "LISTOPS_VOCAB", "IGNORE"]

IGNORE = -100  # label of an unscored position (torch's cross-entropy ignore_index)


@dataclass
class Split:
    """One generated (or loaded) split."""

    tokens: np.ndarray  # (n, T) int64
    mask: np.ndarray  # (n, T) bool, True = real token
    labels: np.ndarray  # (n,) or (n, T) int64, IGNORE where unscored

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Task:
    """Base: a generator with fixed vocabulary, number of classes, level and chance level."""

    name: ClassVar[str]
    level: ClassVar[str]  # "token" (per-token head) or "sequence" (mean-pool classifier)
    about: ClassVar[str]  # what the task measures, one line

    @property
    def vocab(self) -> int:
        raise NotImplementedError

    @property
    def classes(self) -> int:
        raise NotImplementedError

    def min_length(self) -> int:
        """Shortest T this task can generate with its settings."""
        raise NotImplementedError

    def check_length(self, T: int) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T < self.min_length():
            raise ZooValueError(
                f"lengths: task {self.name!r} ({self.describe()}) needs T >= {self.min_length()}, got {T!r}"
            )

    def generate(self, n: int, T: int, rng: np.random.Generator) -> Split:
        raise NotImplementedError

    def chance(self, labels: np.ndarray) -> float:
        """Accuracy of the best constant guess (uniform labels: 1 / classes)."""
        return 1.0 / self.classes

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings().items())


def _check_int(task: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ZooValueError(f"task {task}: {name}: expected an integer >= {minimum}, got {value!r}")


def _distinct_rows(rng: np.random.Generator, n: int, population: int, k: int, logits: np.ndarray | None = None) -> np.ndarray:
    """(n, k) draws without replacement from range(population), weighted by exp(logits) (Gumbel top-k)."""
    scores = rng.gumbel(size=(n, population))  # (n, P)
    if logits is not None:
        scores = scores + logits[None, :]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (n, k)


@dataclass(frozen=True)
class MQAR(Task):
    name: ClassVar[str] = "mqar"
    level: ClassVar[str] = "token"
    about: ClassVar[str] = "in-context associative recall: retrieve the value bound to a key seen earlier"
    num_kv: int = 8  # key-value pairs K per sequence
    num_keys: int = 32  # key half of the vocabulary
    num_values: int = 32  # value half of the vocabulary
    alpha: float = 0.1  # query-slot weight (slot + 1) ** (alpha - 1); Zoology's power law

    def __post_init__(self):
        _check_int(self.name, "num_kv", self.num_kv, 1)
        _check_int(self.name, "num_keys", self.num_keys, self.num_kv)
        _check_int(self.name, "num_values", self.num_values, 2)

    @property
    def vocab(self) -> int:
        return 1 + self.num_keys + self.num_values  # blank, keys, values

    @property
    def classes(self) -> int:
        return self.num_values

    def min_length(self) -> int:
        return 3 * self.num_kv  # context 2K plus K query slots

    def generate(self, n: int, T: int, rng: np.random.Generator) -> Split:
        self.check_length(T)
        K = self.num_kv
        keys = _distinct_rows(rng, n, self.num_keys, K)  # (n, K) key ids
        values = rng.integers(0, self.num_values, size=(n, K))  # (n, K) value ids
        tokens = np.zeros((n, T), dtype=np.int64)
        tokens[:, 0:2 * K:2] = 1 + keys  # k1 . k2 . ...
        tokens[:, 1:2 * K:2] = 1 + self.num_keys + values  # . v1 . v2 ...
        space = T - 2 * K  # query slots
        weights = (np.arange(space) + 1.0) ** (self.alpha - 1.0)
        slots = _distinct_rows(rng, n, space, K, np.log(weights))  # (n, K) query slot of pair k
        rows = np.arange(n)[:, None]  # (n, 1)
        positions = 2 * K + slots  # (n, K)
        tokens[rows, positions] = 1 + keys
        labels = np.full((n, T), IGNORE, dtype=np.int64)
        labels[rows, positions] = values
        return Split(tokens, np.ones((n, T), dtype=bool), labels)


@dataclass(frozen=True)
class SelectiveCopy(Task):
    name: ClassVar[str] = "selective_copy"
    level: ClassVar[str] = "token"
    about: ClassVar[str] = "selective copying (MAD): copy the scattered data tokens, in order, to the end"
    num_copy: int = 8  # data tokens n to copy
    num_data: int = 16  # data alphabet

    def __post_init__(self):
        _check_int(self.name, "num_copy", self.num_copy, 1)
        _check_int(self.name, "num_data", self.num_data, 2)

    @property
    def vocab(self) -> int:
        return 2 + self.num_data  # blank, copy marker, data

    @property
    def classes(self) -> int:
        return self.num_data

    def min_length(self) -> int:
        return 2 * self.num_copy

    def generate(self, n: int, T: int, rng: np.random.Generator) -> Split:
        self.check_length(T)
        m = self.num_copy
        data = rng.integers(0, self.num_data, size=(n, m))  # (n, m)
        where = np.sort(_distinct_rows(rng, n, T - m, m), axis=1)  # (n, m) sorted positions
        tokens = np.zeros((n, T), dtype=np.int64)
        rows = np.arange(n)[:, None]
        tokens[rows, where] = 2 + data
        tokens[:, T - m:] = 1  # copy markers
        labels = np.full((n, T), IGNORE, dtype=np.int64)
        labels[:, T - m:] = data
        return Split(tokens, np.ones((n, T), dtype=bool), labels)


# ListOps vocabulary, shared with the LRA loaders: 0 pad, digits 0-9, the four operators, ']'
LISTOPS_VOCAB = {str(d): 1 + d for d in range(10)}
LISTOPS_VOCAB.update({"[MAX": 11, "[MIN": 12, "[MED": 13, "[SM": 14, "]": 15})
_OPS = ("[MAX", "[MIN", "[MED", "[SM")


def listops_value(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(np.median(args))  # LRA: the median, truncated to an integer
    return sum(args) % 10


@dataclass(frozen=True)
class ListOps(Task):
    name: ClassVar[str] = "listops"
    level: ClassVar[str] = "sequence"
    about: ClassVar[str] = "hierarchical reasoning (LRA ListOps): evaluate nested MAX/MIN/MED/SUM_MOD"
    max_depth: int = 10  # LRA's maximum nesting
    max_args: int = 10  # LRA's maximum arguments per operator
    branch_p: float = 0.25  # probability an argument is itself an operation (LRA: 0.25)

    def __post_init__(self):
        _check_int(self.name, "max_depth", self.max_depth, 1)
        _check_int(self.name, "max_args", self.max_args, 2)
        if not (isinstance(self.branch_p, (int, float)) and 0.0 <= self.branch_p < 1.0):
            raise ZooValueError(f"task listops: branch_p: expected a number in [0, 1), got {self.branch_p!r}")

    @property
    def vocab(self) -> int:
        return 16

    @property
    def classes(self) -> int:
        return 10

    def min_length(self) -> int:
        return 4  # [OP d d ]

    def _tree(self, rng: np.random.Generator, depth: int, budget: int, out: list[str]) -> int:
        """Append one operation of at most ``budget`` tokens to ``out``; return its value."""
        op = _OPS[rng.integers(len(_OPS))]
        n_args = int(rng.integers(2, self.max_args + 1))
        out.append(op)
        left = budget - 2  # the operator and ']'
        args: list[int] = []
        for i in range(n_args):
            room = left - (1 if i == 0 else 0)  # keep one token for the second (required) argument
            if room < 1:
                break
            if depth < self.max_depth and room >= 4 and rng.random() < self.branch_p:
                before = len(out)
                args.append(self._tree(rng, depth + 1, room, out))
                left -= len(out) - before
            else:
                out.append(str(int(rng.integers(10))))
                args.append(int(out[-1]))
                left -= 1
        out.append("]")
        return listops_value(op, args)

    def generate(self, n: int, T: int, rng: np.random.Generator) -> Split:
        self.check_length(T)
        tokens = np.zeros((n, T), dtype=np.int64)
        labels = np.zeros(n, dtype=np.int64)
        for i in range(n):
            out: list[str] = []
            labels[i] = self._tree(rng, 1, T, out)
            tokens[i, : len(out)] = [LISTOPS_VOCAB[t] for t in out]
        return Split(tokens, tokens != 0, labels)

    def chance(self, labels: np.ndarray) -> float:
        if len(labels) == 0:
            return 1.0 / self.classes
        return float(np.bincount(labels, minlength=self.classes).max() / len(labels))


@dataclass(frozen=True)
class Ends(Task):
    name: ClassVar[str] = "ends"
    level: ClassVar[str] = "sequence"
    about: ClassVar[str] = "pure long-range dependency: the label is the pair (first token, last token)"
    symbols: int = 4  # alphabet C; labels C * first + last

    def __post_init__(self):
        _check_int(self.name, "symbols", self.symbols, 2)

    @property
    def vocab(self) -> int:
        return 1 + self.symbols

    @property
    def classes(self) -> int:
        return self.symbols**2

    def min_length(self) -> int:
        return 2

    def generate(self, n: int, T: int, rng: np.random.Generator) -> Split:
        self.check_length(T)
        sym = rng.integers(0, self.symbols, size=(n, T))  # (n, T)
        labels = sym[:, 0] * self.symbols + sym[:, -1]  # (n,)
        return Split((1 + sym).astype(np.int64), np.ones((n, T), dtype=bool), labels.astype(np.int64))


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (MQAR, SelectiveCopy, ListOps, Ends)}


def task_names() -> list[str]:
    return list(TASKS)


def make_task(name: str, **settings: Any) -> Task:
    """A task by name with generator settings; unknown names and keys raise with did-you-mean."""
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ZooValueError(f"tasks: unknown task {name!r}.{hint} Known tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in settings if k not in valid]
    if unknown:
        raise ZooValueError(f"task {name}: unknown setting {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return cls(**settings)

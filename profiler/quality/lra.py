"""Loaders for users who have the real Long Range Arena data (nothing is downloaded).

* ListOps TSV of the LRA release (``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``):
  a header line ``Source<TAB>Target``, then one expression per line such as
  ``( ( [MAX 2 9 ) ] )`` and its value. Parentheses are layout only and are dropped; the other
  tokens map to the generator's vocabulary (:data:`~profiler.quality.tasks.LISTOPS_VOCAB`), so a
  model sees the same ids for generated and real ListOps. Sequences longer than T are cut to T
  (as LRA does at its maximum length), shorter ones padded with 0.
* Processed pickles written by the LRA preprocessing of the Nystromformer / Skeinformer / PoNet
  code (``listops.train.pickle``, ``listops.dev.pickle``, ``listops.test.pickle``): a list of
  dicts with ``input_ids_0`` (token ids, 0 = padding) and ``label``. Unpickling runs code that
  the file names, so these load only with ``allow_pickle=True`` (``--allow-pickle``): use it for
  files you made or trust. Their ids follow that code's own vocabulary, not the generator's.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from profiler.quality.tasks import LISTOPS_VOCAB, Split
from zoo.errors import ZooValueError

__all__ = ["load_listops_tsv", "load_lra_pickle", "load_listops_dir", "TSV_FILES", "PICKLE_FILES"]

TSV_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
PICKLE_FILES = {"train": "listops.train.pickle", "val": "listops.dev.pickle", "test": "listops.test.pickle"}


def _pad(rows: list[list[int]], labels: list[int], T: int) -> Split:
    tokens = np.zeros((len(rows), T), dtype=np.int64)
    for i, ids in enumerate(rows):
        ids = ids[:T]
        tokens[i, : len(ids)] = ids
    return Split(tokens, tokens != 0, np.asarray(labels, dtype=np.int64))


def load_listops_tsv(path: str | Path, T: int) -> Split:
    """One LRA ListOps TSV file as a padded (n, T) split with labels 0..9."""
    path = Path(path)
    if not path.is_file():
        raise ZooValueError(f"listops data: no such file {str(path)!r}")
    rows, labels = [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip() or (number == 1 and line.startswith("Source")):
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ZooValueError(f"listops data: {path}:{number}: expected 'Source<TAB>Target', got {line[:60]!r}")
            source, target = parts
            try:
                ids = [LISTOPS_VOCAB[t] for t in source.split() if t not in ("(", ")")]
            except KeyError as exc:
                raise ZooValueError(f"listops data: {path}:{number}: unknown token {exc.args[0]!r}") from None
            if not target.strip().isdigit() or not 0 <= int(target) <= 9:
                raise ZooValueError(f"listops data: {path}:{number}: expected a label 0..9, got {target!r}")
            rows.append(ids)
            labels.append(int(target))
    if not rows:
        raise ZooValueError(f"listops data: {path}: no examples")
    return _pad(rows, labels, T)


def load_lra_pickle(path: str | Path, T: int, *, allow_pickle: bool = False) -> Split:
    """A processed LRA pickle (list of {input_ids_0, label}); refuses unless ``allow_pickle``."""
    path = Path(path)
    if not allow_pickle:
        raise ZooValueError(
            f"listops data: {str(path)!r} is a pickle; unpickling runs code from the file, so it loads only with "
            "--allow-pickle (allow_pickle=True), for files you trust"
        )
    if not path.is_file():
        raise ZooValueError(f"listops data: no such file {str(path)!r}")
    with open(path, "rb") as fh:
        try:
            data: Any = pickle.load(fh)  # noqa: S301 - explicit opt-in above
        except Exception as exc:
            raise ZooValueError(f"listops data: {path}: not a readable pickle ({type(exc).__name__})") from None
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        raise ZooValueError(f"listops data: {path}: expected a non-empty list of dicts with input_ids_0 and label")
    if "input_ids_1" in data[0]:
        raise ZooValueError(f"listops data: {path}: holds two inputs per example (a retrieval task); expected one")
    rows, labels = [], []
    for i, inst in enumerate(data):
        if "input_ids_0" not in inst or "label" not in inst:
            raise ZooValueError(f"listops data: {path}: example {i} lacks input_ids_0 or label")
        ids = np.asarray(inst["input_ids_0"], dtype=np.int64).ravel()
        rows.append(ids.tolist())  # padding stays 0, so the mask is tokens != 0
        labels.append(int(inst["label"]))
    return _pad(rows, labels, T)


def load_listops_dir(folder: str | Path, T: int, *, allow_pickle: bool = False) -> dict[str, Split]:
    """train / val / test from a folder holding the LRA TSVs or (opt-in) the processed pickles."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ZooValueError(f"listops data: expected a folder with {', '.join(TSV_FILES.values())}, got {str(folder)!r}")
    if all((folder / f).is_file() for f in TSV_FILES.values()):
        return {k: load_listops_tsv(folder / f, T) for k, f in TSV_FILES.items()}
    if all((folder / f).is_file() for f in PICKLE_FILES.values()):
        return {k: load_lra_pickle(folder / f, T, allow_pickle=allow_pickle) for k, f in PICKLE_FILES.items()}
    raise ZooValueError(
        f"listops data: {str(folder)!r} holds neither {', '.join(TSV_FILES.values())} nor {', '.join(PICKLE_FILES.values())}"
    )

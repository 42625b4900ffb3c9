"""Every file in zoo/mixers/ registers the mixer it is named after: a forgotten import line in
zoo/mixers/__init__.py would otherwise drop a mixer from the contract tests, sweeps and reports
without a sound."""

from __future__ import annotations

from pathlib import Path

import pytest

import zoo.mixers
from zoo import get_spec, list_mixers

FILES = sorted(p.stem for p in Path(zoo.mixers.__file__).parent.glob("*.py") if not p.stem.startswith("_"))


def test_there_are_mixer_files():
    assert FILES and "softmax" in FILES


@pytest.mark.parametrize("stem", FILES)
def test_each_mixer_file_registers_its_mixer(stem):
    assert stem in list_mixers(), f"zoo/mixers/{stem}.py: no mixer named {stem!r} is registered (import line missing?)"
    assert get_spec(stem).name == stem

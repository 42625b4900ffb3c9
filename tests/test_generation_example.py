"""The README's greedy-generation example runs, and generates what the parallel causal forward does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from zoo import get_spec, list_mixers

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> dict:
    text = README.read_text()
    block = re.search(r"<!-- generation-example:start -->\n```python\n(.*?)```\n<!-- generation-example:end -->", text, re.S)
    assert block, "README: the generation example block is missing"
    scope: dict = {}
    exec(compile(block.group(1), "README.md:generation-example", "exec"), scope)  # prints a generated sequence
    return scope


def _parallel_greedy(model, prompt, new_tokens):
    """The same model, every step re-running the whole sequence with m(x, causal=True)."""
    seq = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            T = seq.shape[1]
            h = model.embed(seq) + model.pos(torch.arange(T))  # (B, T, D)
            for block in model.blocks:
                h, _ = block(h, None, causal=True)
            logits = model.norm(h) @ model.embed.weight.T  # (B, T, vocab)
            seq = torch.cat([seq, logits[:, -1:].argmax(-1)], dim=1)
    return seq


@pytest.mark.parametrize("mixer", [n for n in list_mixers() if get_spec(n).state is not None])
def test_readme_greedy_generation_equals_the_parallel_forward(mixer):
    TinyLM = _example()["TinyLM"]
    torch.manual_seed(0)
    model = TinyLM(mixer).double().eval()
    prompt = torch.randint(0, 100, (2, 9))
    out = model.generate(prompt, new_tokens=7)
    assert out.shape == (2, 16) and torch.equal(out[:, :9], prompt)
    assert torch.equal(out, _parallel_greedy(model, prompt, 7))

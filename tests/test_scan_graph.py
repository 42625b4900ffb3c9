"""The chunked scans' training graphs stay linear in T: no per-chunk indexing inside a loop.

Indexing chunk n of a tensor inside a Python loop makes autograd build a full-size zero gradient
per chunk (``SelectBackward0``): the training step becomes quadratic in T (mamba2's train step was
2.3x slower than mamba-ssm's minimal SSD at 16k before this was found). The number of such nodes
must not grow with the number of chunks. Structural, not timed."""

from __future__ import annotations

import pytest
import torch

from zoo import create_mixer, get_spec, list_mixers
from zoo.scan import chunked_channel_decay_attention, chunked_decay_attention


def _nodes(out: torch.Tensor, name: str) -> int:
    seen, stack, count = set(), [out.grad_fn], 0
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        count += type(fn).__name__ == name
        stack.extend(f for f, _ in fn.next_functions)
    return count


def _inputs(T: int, channel: bool):
    g = torch.Generator().manual_seed(0)
    B, H, K, V = 1, 2, 4, 4
    q, k, v = (torch.randn(B, H, T, d, generator=g, requires_grad=True) for d in (K, K, V))
    shape = (B, H, T, K) if channel else (B, H, T)
    log_g = (-torch.rand(*shape, generator=g)).requires_grad_()
    return q, k, v, log_g


@pytest.mark.parametrize("scan", [chunked_decay_attention, chunked_channel_decay_attention])
def test_scan_graph_has_no_per_chunk_select(scan):
    channel = scan is chunked_channel_decay_attention
    kw = {"sub_chunk": 4} if channel else {}
    counts = [_nodes(scan(*_inputs(T, channel), chunk=8, **kw), "SelectBackward0") for T in (32, 128)]
    assert counts[0] == counts[1], f"SelectBackward0 nodes grow with the chunks: {counts}"


@pytest.mark.parametrize("name", list_mixers())
def test_no_mixer_training_graph_grows_per_chunk(name):
    """Every registered mixer (causal where it can be): select/slice backward nodes are as many
    at T = 512 as at 128."""
    counts = []
    causal = get_spec(name).causal
    for T in (128, 512):
        m = create_mixer(name, dim=16, heads=2)
        x = torch.randn(1, T, 16, requires_grad=True)
        y = m(x, causal=True) if causal else m(x)
        counts.append([_nodes(y, node) for node in ("SelectBackward0", "SliceBackward0")])
    assert all(long <= short for short, long in zip(*counts)), f"{name}: indexing nodes grow with T: {counts}"

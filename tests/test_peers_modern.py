"""Parity with the peers' pure-PyTorch references (fla-core's naive ops, mamba-ssm's SSD listing).

Runs when the peer files are in the peers folder (``$ZOO_PEERS`` or ``.ref/peers``; see
``benchmarks/peers.py`` for how to fetch them), skips with the reason otherwise. Causal outputs,
fp32, the same weights and inputs: the core op and the whole layer with its core swapped for the
peer's, within 1e-4 relative (issue 15).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.bench_modern import PARITY_TOL, parity_case

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [("mamba2", "ssd_minimal"), ("retnet", "retention"), ("retnet", "simple_gla"), ("gla", "gla")]


def _root_or_skip(peer: str) -> Path:
    root = peers.peers_dir()
    try:
        peers.peer_path(peer, root)
    except peers.PeerMissing as exc:
        pytest.skip(str(exc))
    return root


@pytest.mark.parametrize("name, peer", PAIRS)
@pytest.mark.parametrize("T", [1, 77, 300])
def test_causal_outputs_equal_the_peer(name, peer, T):
    row = parity_case(name, peer, _root_or_skip(peer), T)
    assert row["core_rel_err"] <= PARITY_TOL, row
    assert row["layer_rel_err"] <= PARITY_TOL, row


def test_swapped_core_is_really_the_peer():
    """The layer comparison is not vacuous: a wrong core op makes it fail."""
    import torch

    from zoo import create_mixer

    root = _root_or_skip("ssd_minimal")
    scan = peers.peer_scan("ssd_minimal", root)
    torch.manual_seed(0)
    m = create_mixer("mamba2", dim=32, heads=2, chunk_size=8)
    x = torch.randn(1, 20, 32)
    with torch.no_grad():
        y = m(x, causal=True)
        m.scan = scan
        torch.testing.assert_close(m(x, causal=True), y, atol=1e-5, rtol=1e-4)
        m.scan = lambda q, k, v, log_g, **kw: scan(q, k, v, log_g * 0.5, **kw)
        assert (m(x, causal=True) - y).abs().max() > 1e-3


def test_delta_rule_adapters_match_the_peers_recurrences():
    """The adapters bench_modern uses for part B's deltanet / gated_deltanet (chunked fla ops,
    zoo layout, pre-scaled q) equal fla's token-by-token recurrences."""
    import torch

    torch.manual_seed(0)
    B, H, T, K, V = 1, 2, 45, 8, 4  # 45: not a multiple of the chunk
    q, v = torch.randn(B, H, T, K), torch.randn(B, H, T, V)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, K), dim=-1)
    beta, log_g = torch.rand(B, H, T), -0.1 * torch.rand(B, H, T)
    delta = peers.load_peer("delta_rule", _root_or_skip("delta_rule"))
    expected, _ = delta.delta_rule_recurrence(q, k, v, beta)
    got = peers.peer_scan("delta_rule")(q * K**-0.5, k, v, beta, chunk=16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    gated = peers.load_peer("gated_delta_rule", _root_or_skip("gated_delta_rule"))
    expected, _ = gated.naive_recurrent_gated_delta_rule(*(t.transpose(1, 2) for t in (q, k, v, beta, log_g)))
    got = peers.peer_scan("gated_delta_rule")(q * K**-0.5, k, v, beta, log_g, chunk=16)
    torch.testing.assert_close(got, expected.transpose(1, 2), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--part", "parity", "--peers-dir", "/nonexistent/peers"], "error: peers-dir: expected a folder"),
        (["--part", "parity", "--reps", "0"], "error: reps: expected a positive integer"),
        (["--lengths", "4096"], "error: lengths: expected two or more positive lengths"),
    ],
)
def test_bench_modern_bad_input_is_one_line(args, expected):
    proc = subprocess.run([sys.executable, "benchmarks/bench_modern.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_missing_peer_file_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/bench_modern.py", "--part", "parity", "--peers-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip download --no-deps fla-core" in lines[0], lines

"""The mixers' GPU-side paths, checked on the CPU where possible (issue 17); CUDA-only checks are
marked ``cuda`` and skip without a GPU (and xformers)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_compile import GRAPH_BREAKS, PATHS, build, call, inputs
from tests.tolerances import tol
from zoo import create_mixer, get_mixer_class, list_mixers
from zoo.functional import exclusive_cumsum, sdpa_attention, sliding_window_attention
from zoo.mixers.performer import _causal_favor
from zoo.mixers.softmax import aligned_bias, packed_keys, xformers_available

F64 = tol(torch.float64)
MIXERS = list_mixers()


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


# --- no host round trip: every forward runs on the meta device (a host read or a CPU-side draw fails)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MIXERS)
def test_forward_stays_on_device(name, path, train):
    if (name, path) in GRAPH_BREAKS:
        pytest.skip(f"declared host read: {GRAPH_BREAKS[name, path][1]}")
    cfg = get_mixer_class(name).Config.tiny()
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    m = create_mixer(name, device="meta", **fields).train(train)
    x, mask = inputs(m, path)
    y = call(m, x.to("meta"), None if mask is None else mask.to("meta"))
    assert y.device.type == "meta"


@pytest.mark.parametrize("name", ["bigbird", "longformer", "poolingformer", "skeinformer", "ponet"])
def test_fake_prediction_works_in_training(name):
    # the profiler's prediction runs the train step under FakeTensorMode: data-dependent host
    # values (what broke it for these mixers) raise there
    from profiler.cases import Cell
    from profiler.builders import build_step
    from profiler.cell import _fake_pass
    from zoo.registry import get_config

    config = dataclasses.asdict(get_config(name, dim=32, heads=2))
    cell = Cell(label=name, mixer=name, overrides={}, config=config, scope="mixer", mode="train", T=512,
                batch=2, dim=32, heads=2, depth=None, dtype="fp32", device="cpu")
    fake = _fake_pass(cell, build_step, torch.device("cpu"), torch.float32)
    assert fake["mem_predicted_bytes"] > 0 and fake["flops_counted"] > 0


def test_ponet_segment_ids_on_the_mask_device():
    m = create_mixer("ponet", dim=16, heads=2, num_segments=4)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False
    ids = m.segment_ids(20, mask)
    torch.testing.assert_close(ids, torch.arange(20).expand(2, 20) // torch.tensor([[5], [3]]))
    assert m.segment_ids(20, mask.to("meta")).device.type == "meta"  # built there, no host read


# --- band attention: the fused SDPA kernel also for B > 1


@pytest.mark.parametrize("B", [1, 2])
def test_band_attention_keeps_the_fused_backend(B):
    q, k, v = (torch.randn(B, 2, 40, 8) for _ in range(3))
    with OpNames() as rec:
        sliding_window_attention(q, k, v, window=4)
    assert "_scaled_dot_product_flash_attention_for_cpu" in rec.ops, sorted(rec.ops)
    assert "_scaled_dot_product_attention_math" not in rec.ops


# --- scan forms (GPU) and loops (CPU) agree


def test_exclusive_cumsum_paths_agree():
    x = torch.randn(2, 3, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    loop, scan = exclusive_cumsum(x, scan=False), exclusive_cumsum(x, scan=True)
    torch.testing.assert_close(scan, loop, **F64)
    torch.testing.assert_close(loop[:, :, 0], torch.zeros_like(loop[:, :, 0]))
    g = torch.randn_like(loop)
    (gl,) = torch.autograd.grad((loop * g).sum(), x)
    (gs,) = torch.autograd.grad((scan * g).sum(), x)
    torch.testing.assert_close(gs, gl, **F64)


@pytest.mark.parametrize("masked", [False, True])
def test_causal_favor_scan_equals_loop(masked):
    B, H, T, R, P = 2, 2, 37, 6, 4
    phi_q = torch.rand(B, H, T, R, dtype=torch.float64, requires_grad=True)
    a = (torch.randn(B, H, T, R, dtype=torch.float64) * 3).requires_grad_(True)
    v = torch.randn(B, H, T, P, dtype=torch.float64, requires_grad=True)
    keys = None
    if masked:
        keys = torch.ones(B, T, dtype=torch.bool)
        keys[1, 30:] = False
    loop = _causal_favor(phi_q, a, v, keys, 4, 1e-3, scan=False)
    scan = _causal_favor(phi_q, a, v, keys, 4, 1e-3, scan=True)
    torch.testing.assert_close(scan, loop, **F64)
    g = torch.randn_like(loop)
    for gl, gs in zip(torch.autograd.grad((loop * g).sum(), (phi_q, a, v)),
                      torch.autograd.grad((scan * g).sum(), (phi_q, a, v))):
        torch.testing.assert_close(gs, gl, **F64)


# --- xformers path: the bias logic on the CPU, the kernel on CUDA


def test_packed_keys_reproduce_masked_attention():
    # emulate BlockDiagonalMask: each sequence's T queries attend to its packed keys only
    B, H, T, P = 3, 2, 13, 4
    q, k, v = (torch.randn(B, H, T, P, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 9:] = False
    mask[1, 4] = False  # a hole
    mask[2] = False  # fully padded: keeps all keys
    index, counts = packed_keys(mask)
    assert counts == [9, 12, 13] and index.shape == (34,)
    kp = k.transpose(1, 2).reshape(B * T, H, P)[index]  # (N, H, P)
    vp = v.transpose(1, 2).reshape(B * T, H, P)[index]
    starts = [0, 9, 21]
    for b in range(B):
        ks = kp[starts[b] : starts[b] + counts[b]].transpose(0, 1)[None]  # (1, H, N_b, P)
        vs = vp[starts[b] : starts[b] + counts[b]].transpose(0, 1)[None]
        got = F.scaled_dot_product_attention(q[b : b + 1], ks, vs)
        torch.testing.assert_close(got, sdpa_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], mask[b : b + 1]), **F64)


@pytest.mark.parametrize("T", [5, 8, 13])
def test_aligned_bias_rows_are_8_aligned(T):
    allowed = torch.rand(2, 1, T, T) > 0.5
    bias = aligned_bias(allowed, torch.float16)
    assert bias.shape == (2, 1, T, T) and bias.stride(-2) % 8 == 0
    assert (bias[allowed] == 0).all() and (bias[~allowed] < -1e4).all()


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_xformers_matches_sdpa_on_cuda(causal, masked):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if not xformers_available():
        pytest.skip("needs the xformers package (pip install -e .[xformers])")
    T = 37  # not a multiple of 8
    ref = create_mixer("softmax", dim=64, heads=4, device="cuda", dtype=torch.float16)
    xf = create_mixer("softmax", dim=64, heads=4, impl="xformers", device="cuda", dtype=torch.float16)
    xf.load_state_dict(ref.state_dict())
    x = torch.randn(3, T, 64, device="cuda", dtype=torch.float16)
    mask = None
    if masked:
        mask = torch.ones(3, T, dtype=torch.bool, device="cuda")
        mask[1, 20:] = False
        mask[2, 3] = False
    torch.testing.assert_close(xf(x, mask, causal=causal), ref(x, mask, causal=causal), **tol(torch.float16))

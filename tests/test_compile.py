"""torch.compile for every registered mixer: graphs, host syncs, recompiles, eager equality.

Mixers are taken from the registry, so a new mixer is covered without an edit here; a mixer whose
forward has a data-dependent shape on some path declares it in ``GRAPH_BREAKS`` (with the
reason), one whose forward specialises on T declares it in ``RECOMPILES_ON_NEW_T``. Everything
else must compile with ``fullgraph=True`` (no graph break, hence no host sync) and
``dynamic=True`` without recompiling for a new T.

Cost (2 CPU cores): inductor compiles are the slow part (~10-20 s each), so inductor runs one
no-grad forward per mixer (``slow``); the gradient, dynamic and graph-count checks use the
``aot_eager`` backend or count frames without compiling kernels.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter
from torch.utils._python_dispatch import TorchDispatchMode

from tests.tolerances import tol
from zoo import create_mixer, get_mixer_class, list_mixers

MIXERS = list_mixers()
PATHS = ("plain", "mask")  # mask=None, or a padded batch

# (mixer, path) -> (graph breaks, why the shape is data-dependent). Host reads stay only here.
GRAPH_BREAKS: dict[tuple[str, str], tuple[int, str]] = {
    ("ponet", "mask"): (
        2,
        "segment length ceil(N_b / num_segments) per sequence; the number of segments (a shape) "
        "follows the shortest, read on the host (.tolist())",
    ),
}
# mixer -> why a new T recompiles under dynamic=True (none so far)
RECOMPILES_ON_NEW_T: dict[str, str] = {}

F32 = tol(torch.float32)


def build(name: str, train: bool = False) -> torch.nn.Module:
    cfg = get_mixer_class(name).Config.tiny()
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    torch.manual_seed(0)
    return create_mixer(name, **fields).train(train)


def inputs(m: torch.nn.Module, path: str, T: int = 16, B: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.randn(B, T, m.dim)
    if path == "plain":
        return x, None
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, T - 5 :] = False  # one padded sequence
    return x, mask


def call(m, x, mask):
    return m.forward_with_mask(x, mask)[0] if m.spec.reduces_length else m(x, mask)


def fullgraph(name: str, path: str) -> bool:
    return (name, path) not in GRAPH_BREAKS


def buffers(m) -> dict[str, torch.Tensor]:
    return {k: b.clone() for k, b in m.named_buffers()}


def restore(m, saved: dict[str, torch.Tensor]) -> None:
    """Put back buffers a call advanced (random-draw state), so eager replays the compiled draws."""
    with torch.no_grad():
        for k, b in m.named_buffers():
            b.copy_(saved[k])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


class HostReads(TorchDispatchMode):
    """Counts host reads of tensor values: ``aten._local_scalar_dense`` (what .item(), int(t) and
    bool(t) become) and ``Tensor.tolist`` (which reads the data without dispatching)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        mode = self

        def counting_tolist(t):
            mode.count += 1
            return mode._tolist(t)

        torch.Tensor.tolist = counting_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MIXERS)
def test_no_host_read_in_forward(name, path, train):
    # eager, no compiler: a device sync on a GPU is a host read of a tensor value
    m = build(name, train)
    x, mask = inputs(m, path)
    with HostReads() as reads:
        call(m, x, mask)
    if fullgraph(name, path):
        assert reads.count == 0, f"{name} ({path}): {reads.count} host reads of tensor values in one forward"
    else:
        assert reads.count > 0, f"{name} ({path}) is declared in GRAPH_BREAKS but reads nothing: remove it"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MIXERS)
def test_graph_break_count_is_declared(name, path):
    m = build(name)
    x, mask = inputs(m, path)
    explained = dynamo.explain(m.forward_with_mask if m.spec.reduces_length else m)(x, mask)
    want = GRAPH_BREAKS.get((name, path), (0, ""))[0]
    reasons = [str(r.reason).splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_break_count == want, f"{name} ({path}): {reasons}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MIXERS)
def test_compiled_forward_backward_equal_eager(name, path):
    # training mode (stochastic mixers draw), aot_eager: the autograd graphs inductor would get
    m = build(name, train=True)
    x, mask = inputs(m, path)
    x.requires_grad_(True)
    params = [x] + [p for p in m.parameters() if p.requires_grad]
    saved = buffers(m)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=fullgraph(name, path))
    y_c = call(compiled, x, mask) if not m.spec.reduces_length else compiled.forward_with_mask(x, mask)[0]
    restore(m, saved)
    y_e = call(m, x, mask)
    torch.testing.assert_close(y_c, y_e, **F32)
    g = torch.randn_like(y_e)
    grads_c = torch.autograd.grad((y_c * g).sum(), params, allow_unused=True)
    grads_e = torch.autograd.grad((y_e * g).sum(), params, allow_unused=True)
    for a, b in zip(grads_c, grads_e):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **F32)


@pytest.mark.parametrize("name", MIXERS)
def test_dynamic_new_length_does_not_recompile(name):
    m = build(name)
    counter = CompileCounter()  # counts compiled frames, runs them eagerly
    compiled = torch.compile(m, backend=counter, dynamic=True, fullgraph=fullgraph(name, "plain"))
    for T in (16, 24, 37):
        x, _ = inputs(m, "plain", T=T)
        torch.testing.assert_close(call(compiled, x, None), call(m, x, None), **F32)
    if name in RECOMPILES_ON_NEW_T:
        assert counter.frame_count > 1, f"{name} is declared in RECOMPILES_ON_NEW_T but compiled once: remove it"
    else:
        assert counter.frame_count == 1, f"{name}: {counter.frame_count} compiles for 3 lengths with dynamic=True"


@pytest.mark.slow
@pytest.mark.parametrize("name", MIXERS)
def test_inductor_forward_equals_eager(name):
    m = build(name)
    x, mask = inputs(m, "mask")
    compiled = torch.compile(m, fullgraph=fullgraph(name, "mask"))
    with torch.no_grad():
        torch.testing.assert_close(call(compiled, x, mask), call(m, x, mask), **F32)

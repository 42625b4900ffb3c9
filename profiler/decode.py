"""A ``mode="decode"`` cell: generation at context length T through a mixer's state API.

Protocol (inside the cell's process, after :func:`profiler.cell` has set threads and the heap):

1. build (:func:`profiler.builders.build_decoder`: the mixer, a prompt of T tokens, one new token);
2. *prefill*: the first call is set-up and is checked (shape, finite values); then prefill is
   timed like any step (``prefill_s`` = median; ``prefill_samples`` raw), each call on a fresh
   state; a prompt whose set-up call alone took half the budget is timed once more, no warm-up;
3. one more token is committed to the set-up call's state (a KV cache grows its capacity here, once), and
   ``state_bytes`` is read: the bytes held by the state's tensors at context T + 1;
4. *steady state*: one new token at context T + 1, then the state is rolled back
   (:meth:`zoo.state.MixerState.restore`), so every timed step sees the same context and the
   context never grows while timing; warm-up and timed calls as :mod:`profiler.timing` does
   (``time_*`` fields: seconds per generated token).

On CPU the timed calls run in the caching heap when the profiler manages glibc's heap.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from profiler.builders import Decoder, Step, build_decoder
from profiler.cell import probed_samples
from profiler.heap import set_heap_mode
from profiler.timing import summarise_samples, warm_up

__all__ = ["measure_decode", "steady_token", "token_step"]


def _time(run, fn, device: torch.device, budget: float) -> tuple[list[float], int, float]:
    """Warm-up, then the cell's probed samples (the contention fields of the last call stay: the
    per-token timing's)."""
    since = time.perf_counter()
    n, seconds = warm_up(fn, device=device, calls=0, since=since, min_calls=1, deadline=run.deadline)
    return probed_samples(run, fn, device, budget), n, seconds


def _time_prefill(run, fn, device: torch.device, budget: float, first_s: float) -> list[float]:
    """Prefill samples: as any step, except that a prompt whose set-up call alone took at least
    ``budget`` is timed once more, without warm-up (the set-up call paid the one-off costs; at
    64k tokens softmax's prefill is ~45 s a call on one core)."""
    if first_s < budget:
        return _time(run, fn, device, budget)[0]
    return probed_samples(run, fn, device, budget, min_reps=1)


def steady_token(dec: Decoder, state, cell) -> Callable[[], Any]:
    """Commit one token to ``state`` (context T + 1; a KV cache grows its capacity here, once) and
    return the timed call: one new token, then the state rolled back (step 4 of the protocol)."""
    dec.check(dec.step(state), (cell.batch, 1, cell.dim))
    snap = state.snapshot()

    def one_token():
        y_t = dec.step(state)
        state.restore(snap)
        return y_t

    return one_token


def token_step(cell, device: torch.device, dtype: torch.dtype) -> Step:
    """A decode cell as a plain step (for :mod:`profiler.interleave`): the prompt prefilled once
    (the set-up call, checked), then one new token per call at context T + 1."""
    dec = build_decoder(cell, device, dtype)
    y, state = dec.prefill()
    dec.check(y, (cell.batch, cell.T, cell.dim))
    del y
    return Step(fn=steady_token(dec, state, cell), params=int(dec.params))


def measure_decode(run, device: torch.device, dtype: torch.dtype, managed: bool) -> None:
    """Fill ``run`` (a :class:`profiler.cell._Run`) with a decode cell's fields and status ok."""
    cell = run.cell
    dec = build_decoder(cell, device, dtype)
    run.note(params=int(dec.params), state_class=dec.state_class, flops_analytic=None)
    run.lap("build")
    budget = float(run.opts.get("time_budget_s", 2.0))
    if managed:
        run.note(cpu_heap={"memory": None, "timing": set_heap_mode("caching")})

    t0 = time.perf_counter()
    y, state = dec.prefill()  # set-up call, checked; its state is the one generation continues
    first_s = time.perf_counter() - t0
    dec.check(y, (cell.batch, cell.T, cell.dim))
    del y
    run.lap("first_call")
    run.check_deadline("prefill")
    if not run.opts.get("timing_only"):  # a later round (profiler.rounds) times generation alone
        prefill = summarise_samples(_time_prefill(run, dec.prefill, device, budget / 2, first_s))
        run.note(prefill_s=prefill["time_median_s"], prefill_samples=prefill["time_samples"])
    run.lap("prefill")

    one_token = steady_token(dec, state, cell)
    run.note(state_bytes=int(dec.state_bytes(state)), context=cell.T + 1)
    samples, n, seconds = _time(run, one_token, device, budget)
    run.note(warmup_calls=n, warmup_s=seconds)
    run.lap("timing")
    run.note(**summarise_samples(samples), status="ok", reason=None, inferred=False)

"""Contention: what the rest of the machine does while a cell is timed (issue 10). Torch-free.

*Why.* On 2 cores one other busy process made 25 of 140 cells > 1.5x slower (up to 32x) at 2
torch threads: every parallel region waits for the thread that shares a core, and no statistic of
the samples (median, minimum) recovers the quiet value. So contention is *observed*, per sample.

*Signals* (Linux; elsewhere every figure is ``None`` and nothing is ever called contended):

- ``other_cpu``: cores used by all other processes: busy time (user + nice + system + irq +
  softirq + steal) of the CPUs this process may run on (``/proc/stat``) minus this process's own
  CPU time (all threads, ``time.process_time``), over wall time; ``steal_cpu`` is the steal part (a
  noisy VM neighbour). ``/proc/stat`` counts 10 ms ticks, so a 25 ms sample is not judged alone:
  the figure covers a window of >= :data:`MIN_WINDOW_S` ending with the sample (it and the samples
  just before it), and :data:`TICK_SLACK` ticks over the window's length are subtracted first.
- ``run_wait``: how many of this process's threads were, on average, runnable but waiting for a
  CPU during the sample (``run_delay`` of ``/proc/self/task/*/schedstat``, ns). Exact at any sample
  length, and it measures the harm itself; ignored when the cell runs more threads than cores.
- ``neighbour_cpu``: cores other processes used, over the same window, on the CPUs the sweep may
  use but left free (the cell is pinned to the quietest ones, :mod:`profiler.affinity`). No sample
  figure sees what they do to the cell, yet they share caches, memory bandwidth and perhaps a
  physical core with it: beside one busy process on the 2-core VM, with the cell on the other
  core, cells ran 1.1-1.4x slower, unequally, and ratios between mixers moved by up to 28%.
  A cell whose samples saw them use :data:`NEIGHBOUR_CPU` cores or more on average is marked
  ``neighbours`` (:func:`neighbours_busy`): not clean, like a contended or noisy one.

*Threshold*, one rule (:func:`judge`): a cell of ``threads`` threads on ``cores`` CPUs leaves
``cores - threads`` free; a sample is *contended* when others used more than :data:`OTHER_LIMIT`
cores beyond the free ones, or the cell's threads waited for a CPU more than :data:`WAIT_LIMIT`
of their time.

*Strategy for clean numbers on a busy machine*, in order:

1. **Pre-flight** (:func:`preflight`): others' CPU over half a second, load average, governor, the
   busiest other processes; kept in the sweep header, and one stderr line with the remedy when the
   sweep's threads would share cores with them.
2. **Fewer threads than cores** (:func:`auto_threads`, ``--threads auto``): cores minus busy
   cores, at least 1, recorded in every cell. The thread count changes the comparison itself
   (ratios to softmax at 1 and 2 threads agree within 15% for half the cells): it is a setting of
   the run, never a silent correction.
3. **Retake contended samples** within the cell's time budget (the timing loop drops a sample
   whose :meth:`ContentionProbe.end` says ``contended``).
4. **Wait for a quiet window**, bounded: after :data:`CONTENDED_RUN` contended samples in a row,
   the next :meth:`~ContentionProbe.begin` waits (outside the timed region) for others to leave the
   cell's cores, at most ``wait_budget_s`` per cell; after one wait that finds no quiet window the
   load is taken as persistent and the cell waits no more.
5. A cell still short of clean samples is recorded ``contended: true`` and shown as such.

Interleaving the cells of one length in rounds is a sweep-level change, proposed separately.
*Limits.* What others do from the free cores is seen as their CPU time there (``neighbour_cpu``),
not as its effect on the cell, which may be nothing or 40%; other tenants of a VM's host are seen
only as steal, and through the drift they cause (:mod:`profiler.drift`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from reports.cells import NEIGHBOUR_EFFECT

__all__ = [
    "OTHER_LIMIT", "WAIT_LIMIT", "MIN_WINDOW_S", "TICK_SLACK", "CONTENDED_RUN",
    "ProcReader", "per_cpu_ticks", "ContentionProbe", "judge", "usable_cores", "current_threads", "cpu_quota", "busy_cores", "auto_threads",
    "measure_others", "wait_for_quiet", "preflight", "preflight_line", "neighbour_line", "warn_if_busy", "NEIGHBOUR_CPU",
    "neighbours_busy", "PROBE_FIELDS",
]

OTHER_LIMIT = 0.2  # cores of the cell's cores others may use before a sample is contended
WAIT_LIMIT = 0.05  # share of the cell's thread time spent runnable but waiting for a CPU
MIN_WINDOW_S = 0.25  # others' CPU is judged over at least this much wall time (ticks are 10 ms)
TICK_SLACK = 2.0  # ticks of truncation/sampling error in a window's busy time
CONTENDED_RUN = 3  # contended samples in a row before the probe waits for a quiet window
QUIET_POLL_S = 0.25  # window of each look for quiet
PREFLIGHT_WINDOW_S = 0.5
# others' CPU (cores), on the cores a sweep leaves free, from which the pre-flight notes them: they share
# the caches, memory bandwidth and perhaps the physical cores with the sweep, which no sample figure sees
NEIGHBOUR_CPU = 0.5

# the per-cell fields a probe's samples give (ContentionProbe.summary and the sampler's verdict); a
# timing run that replaces another's timing replaces these with it (profiler.rounds, profiler.interleave)
PROBE_FIELDS = ("contended", "contended_samples", "other_cpu", "steal_cpu", "run_wait", "quiet_wait_s",
                "neighbour_cpu", "neighbours")


# --------------------------------------------------------------------------- readers
class ProcReader:
    """The operating system's counters; every method returns ``None`` where unreadable.

    Tests replace it with a scripted reader; nothing else in this module touches ``/proc``.
    """

    def __init__(self, proc: str = "/proc", sys_root: str = "/sys") -> None:
        self.proc, self.sys_root = proc, sys_root
        self.tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def cpu_times(self, cpus: frozenset[int] | None) -> tuple[float, float] | None:
        """(busy seconds, steal seconds) summed over ``cpus`` (None: all), since boot."""
        ticks = per_cpu_ticks(self.proc)
        if ticks is None:
            return None
        rows = [v for c, v in ticks.items() if cpus is None or c in cpus]
        return sum(b for b, _ in rows) / self.tick, sum(st for _, st in rows) / self.tick

    def now(self) -> float:
        return time.perf_counter()

    def own_cpu(self) -> float:
        return time.process_time()  # all threads of this process, ns resolution

    def thread_waits(self) -> dict[int, int] | None:
        """{thread id: ns spent runnable but not running} for this process's threads."""
        root = f"{self.proc}/self/task"
        out = {}
        for tid in _listdir(root):
            try:
                with open(f"{root}/{tid}/schedstat") as fh:
                    out[int(tid)] = int(fh.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended between listdir and open
        return out or None

    def loadavg(self) -> tuple[float, float, float] | None:
        try:
            return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
        except (OSError, AttributeError):
            return None

    def governor(self, cpus: frozenset[int] | None) -> str | None:
        seen = []
        for cpu in sorted(cpus or range(os.cpu_count() or 1)):
            try:
                with open(f"{self.sys_root}/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor") as fh:
                    name = fh.read().strip()
            except OSError:
                continue
            if name not in seen:
                seen.append(name)
        return ",".join(seen) or None

    def process_times(self) -> dict[int, tuple[str, float]]:
        """{pid: (command name, CPU seconds)} of every readable process (empty without /proc)."""
        out = {}
        for pid in (p for p in _listdir(self.proc) if p.isdigit()):
            try:
                with open(f"{self.proc}/{pid}/stat") as fh:
                    head, _, tail = fh.read().rpartition(")")
            except OSError:
                continue
            f = tail.split()  # from field 3 (state) on: utime is field 14, stime 15
            if len(f) > 12:
                out[int(pid)] = (head.partition("(")[2], (int(f[11]) + int(f[12])) / self.tick)
        return out


def per_cpu_ticks(proc: str = "/proc") -> dict[int, tuple[float, float]] | None:
    """{cpu id: (busy ticks, steal ticks)} since boot from ``proc``/stat; busy is user + nice +
    system + irq + softirq + steal (guest is inside user). None where unreadable."""
    try:
        with open(f"{proc}/stat") as fh:
            rows = [ln.split() for ln in fh if ln.startswith("cpu") and not ln.startswith("cpu ")]
    except OSError:
        return None
    out = {}
    for f in rows:
        if len(f) < 9:
            continue
        v = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
        out[int(f[0][3:])] = (float(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]), float(v[7]))
    return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def usable_cores() -> tuple[int, frozenset[int] | None]:
    """(CPUs this process may run on, their ids or None where unknown): the affinity mask. Others'
    busy time is counted on exactly these CPUs."""
    try:
        cpus = frozenset(os.sched_getaffinity(0))
        return len(cpus), cpus
    except (AttributeError, OSError):  # macOS
        return os.cpu_count() or 1, None


def current_threads() -> int:
    """The compute threads of this process: torch's count when torch is already imported (this
    module never imports it), else ``OMP_NUM_THREADS``, else the usable cores."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else usable_cores()[0]


def cpu_quota() -> float | None:
    """CPUs' worth of time a cgroup quota allows (containers), None when unlimited or unknown."""
    for path, period_path in (("/sys/fs/cgroup/cpu.max", None),
                              ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            with open(path) as fh:
                fields = fh.read().split()
            if period_path is not None:
                with open(period_path) as fh:
                    fields.append(fh.read().strip())
            if fields[0] in ("max", "-1"):
                return None
            return int(fields[0]) / int(fields[1])
        except (OSError, IndexError, ValueError, ZeroDivisionError):
            continue
    return None


# --------------------------------------------------------------------------- the rule
def judge(other_cpu: float | None, run_wait: float | None, *, threads: int, cores: int,
          window_s: float | None = None, tick: float = 100.0) -> tuple[bool, str | None]:
    """(contended, why) for a sample: THE rule (module docstring, *Threshold*).

    ``other_cpu``: others' cores over a window of ``window_s`` seconds; ``run_wait``: this
    process's threads waiting for a CPU, on average, during the sample.
    """
    used = max(1, min(int(threads), int(cores)))
    if other_cpu is not None:
        slack = TICK_SLACK / (tick * window_s) if window_s else 0.0
        overlap = other_cpu - (cores - used)
        if overlap - slack > OTHER_LIMIT:
            return True, f"other processes used {other_cpu:.2f} cores, {overlap:.2f} of them on the cell's {used}"
    if run_wait is not None and threads <= cores and run_wait > WAIT_LIMIT * used:
        return True, f"the cell's threads waited for a CPU {run_wait / used:.0%} of their time"
    return False, None


def neighbours_busy(neighbour_cpu: float | None) -> bool:
    """Whether others' CPU use (cores) on the cores a sweep leaves free is enough to mark it: the
    one rule of the pre-flight note and of a cell's ``neighbours`` mark."""
    return neighbour_cpu is not None and neighbour_cpu >= NEIGHBOUR_CPU


def busy_cores(other_cpu: float | None, cores: int) -> int:
    """Cores to leave to others: the fewest that keep their overlap with ours within OTHER_LIMIT."""
    if other_cpu is None:
        return 0
    return max(0, min(cores, math.ceil(other_cpu - OTHER_LIMIT - 1e-9)))


def auto_threads(requested: int | str = "auto", *, other_cpu: float | None = None, cores: int | None = None,
                 reader: ProcReader | None = None) -> int:
    """Threads for ``--threads``: an explicit positive int is kept; ``"auto"`` is usable cores
    minus busy cores (others' CPU measured now over half a second unless ``other_cpu`` is
    given), at least 1, and no more than a cgroup quota allows."""
    if isinstance(requested, bool) or not (requested == "auto" or (isinstance(requested, int) and requested >= 1)):
        raise ValueError(f"threads: expected a positive integer or 'auto', got {requested!r}")
    if requested != "auto":
        return int(requested)
    if cores is None:
        cores = usable_cores()[0]
    if other_cpu is None:
        other_cpu = measure_others(PREFLIGHT_WINDOW_S, reader=reader)["other_cpu"]
    quota = cpu_quota()
    limit = cores if quota is None else max(1, int(quota + 1e-9))
    return max(1, min(limit, cores - busy_cores(other_cpu, cores)))


# --------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class _Snap:
    t: float
    cpu: tuple[float, float] | None  # (busy, steal) seconds of the watched CPUs
    own: float
    free: float | None = None  # busy seconds of the CPUs the sweep left free (None: none, or unreadable)


def _snap(reader: ProcReader, cpus: frozenset[int] | None, free: frozenset[int] = frozenset()) -> _Snap:
    busy_free = reader.cpu_times(free) if free else None
    return _Snap(reader.now(), reader.cpu_times(cpus), reader.own_cpu(), None if busy_free is None else busy_free[0])


def _neighbours(a: _Snap, b: _Snap) -> float | None:
    """Others' cores on the free CPUs between two snapshots (this process is not on them)."""
    wall = b.t - a.t
    if a.free is None or b.free is None or wall <= 0:
        return None
    return max(0.0, (b.free - a.free) / wall)


def _others(a: _Snap, b: _Snap) -> tuple[float | None, float | None]:
    """(other_cpu, steal_cpu) in cores between two snapshots."""
    wall = b.t - a.t
    if a.cpu is None or b.cpu is None or wall <= 0:
        return None, None
    other = (b.cpu[0] - a.cpu[0]) - (b.own - a.own)
    return max(0.0, other / wall), max(0.0, (b.cpu[1] - a.cpu[1]) / wall)


def measure_others(window_s: float = PREFLIGHT_WINDOW_S, *, reader: ProcReader | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Others' CPU use (cores) and steal over ``window_s`` seconds of this process sleeping."""
    reader = reader or ProcReader()
    cpus = usable_cores()[1]
    a = _snap(reader, cpus)
    sleep(window_s)
    b = _snap(reader, cpus)
    other, steal = _others(a, b)
    return {"other_cpu": other, "steal_cpu": steal, "window_s": b.t - a.t}


def wait_for_quiet(threads: int, max_wait_s: float, *, cores: int | None = None, reader: ProcReader | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Sleep in windows of :data:`QUIET_POLL_S` until others leave the cores ``threads`` threads
    need (by :func:`judge`), at most ``max_wait_s``. Returns ``{quiet, waited_s, other_cpu}``;
    ``quiet`` is True at once where contention cannot be read."""
    reader = reader or ProcReader()
    if cores is None:
        cores = usable_cores()[0]
    start = reader.now()
    while True:
        m = measure_others(QUIET_POLL_S, reader=reader, sleep=sleep)
        other = m["other_cpu"]
        if other is None or not judge(other, None, threads=threads, cores=cores, window_s=m["window_s"],
                                      tick=reader.tick)[0]:
            return {"quiet": True, "waited_s": reader.now() - start, "other_cpu": other}
        if reader.now() - start + QUIET_POLL_S > max_wait_s:
            return {"quiet": False, "waited_s": reader.now() - start, "other_cpu": other}


# --------------------------------------------------------------------------- the per-sample probe
class ContentionProbe:
    """What the rest of the machine did during each timed sample of ONE cell.

    The timing loop calls ``begin()`` right before a sample's clock starts and ``end()`` right
    after it stops; ``end()`` returns ``{contended, other_cpu, steal_cpu, run_wait, neighbour_cpu,
    window_s, quiet_wait_s, why}`` (cores, threads, seconds; ``None`` where unreadable).
    ``summary()`` gives the per-cell fields. ``threads``: the threads the cell runs (default:
    torch's current count when torch is loaded, so ``ContentionProbe()`` is a zero-argument factory
    for the cell process); ``wait_budget_s``: the most this probe waits for quiet in all;
    ``free_cpus``: the CPUs the sweep left free, whose use by others is ``neighbour_cpu`` (default:
    :func:`profiler.affinity.free_cpus`, those the cell's pinning left out).
    """

    def __init__(self, threads: int | None = None, *, wait_budget_s: float = 0.5, reader: ProcReader | None = None,
                 cores: int | None = None, sleep: Callable[[float], None] = time.sleep,
                 free_cpus: frozenset[int] | None = None) -> None:
        threads = current_threads() if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads!r}")
        self.threads = threads
        self.reader = reader or ProcReader()
        n, self.cpus = usable_cores()
        self.cores = cores or n
        if free_cpus is None:
            from profiler.affinity import free_cpus as pinned_out  # affinity imports this module

            free_cpus = pinned_out()
        self.free_cpus = frozenset(free_cpus)
        self._sleep = sleep
        self._history: deque[_Snap] = deque()  # begin snapshots of recent samples, oldest first
        self._begin: _Snap | None = None
        self._waits0: dict[int, int] | None = None
        self._streak = 0
        self._wait_left = float(wait_budget_s)
        self._quiet_wait = 0.0
        self.results: list[dict[str, Any]] = []

    def begin(self) -> None:
        self._quiet_wait = 0.0
        if self._streak >= CONTENDED_RUN and self._wait_left > 0:
            got = wait_for_quiet(self.threads, self._wait_left, cores=self.cores, reader=self.reader, sleep=self._sleep)
            self._quiet_wait = got["waited_s"]
            self._wait_left = self._wait_left - got["waited_s"] if got["quiet"] else 0.0  # persistent load
            self._streak = 0
            self._history.clear()  # the next window starts after the wait, not in the load before it
        self._begin = _snap(self.reader, self.cpus, self.free_cpus)
        self._history.append(self._begin)
        self._waits0 = self.reader.thread_waits()

    def end(self) -> dict[str, Any]:
        if self._begin is None:
            raise RuntimeError("ContentionProbe.end() called without begin()")
        now = _snap(self.reader, self.cpus, self.free_cpus)
        waits1 = self.reader.thread_waits()
        wall = now.t - self._begin.t
        # others' CPU over the newest window >= MIN_WINDOW_S ending now (ticks are coarse)
        start = self._history[0]
        for snap in self._history:
            if now.t - snap.t >= MIN_WINDOW_S:
                start = snap
        while self._history[0] is not start:
            self._history.popleft()
        other, steal = _others(start, now)
        run_wait = None
        if self._waits0 is not None and waits1 is not None and wall > 0:
            waited_ns = sum(max(0, v - self._waits0.get(tid, 0)) for tid, v in waits1.items())
            run_wait = waited_ns / 1e9 / wall
        window = now.t - start.t
        contended, why = judge(other, run_wait, threads=self.threads, cores=self.cores, window_s=window,
                               tick=self.reader.tick)
        self._streak = self._streak + 1 if contended else 0
        self._begin = None
        result = {"contended": contended, "other_cpu": other, "steal_cpu": steal, "run_wait": run_wait,
                  "neighbour_cpu": _neighbours(start, now),
                  "window_s": window if other is not None else None, "quiet_wait_s": self._quiet_wait, "why": why}
        self.results.append(result)
        return result

    def summary(self) -> dict[str, Any]:
        """Per-cell fields: ``contended_samples`` (of ``probed_samples``), means of ``other_cpu``,
        ``steal_cpu``, ``run_wait`` and ``neighbour_cpu`` over the probed samples, total
        ``quiet_wait_s``, and ``neighbours`` (:func:`neighbours_busy` of that mean)."""

        def mean(key: str) -> float | None:
            vals = [r[key] for r in self.results if r[key] is not None]
            return round(sum(vals) / len(vals), 4) if vals else None

        return {
            "contended_samples": sum(bool(r["contended"]) for r in self.results),
            "probed_samples": len(self.results),
            "other_cpu": mean("other_cpu"),
            "steal_cpu": mean("steal_cpu"),
            "run_wait": mean("run_wait"),
            "quiet_wait_s": round(sum(r["quiet_wait_s"] for r in self.results), 4),
            "neighbour_cpu": mean("neighbour_cpu"),
            "neighbours": neighbours_busy(mean("neighbour_cpu")),
        }


# --------------------------------------------------------------------------- pre-flight
def preflight(threads: int | str | None = None, *, window_s: float = PREFLIGHT_WINDOW_S,
              reader: ProcReader | None = None, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """How busy the machine is before a sweep, for the header: others' CPU use (cores) and steal
    over ``window_s``, load average, governor, the busiest other processes, ``auto_threads`` (what
    ``--threads auto`` picks now), ``threads`` (the count the sweep will run: ``threads`` as
    given, every core for None, ``auto_threads`` for ``"auto"``), ``busy`` (that count would share
    cores with others) and ``message``, the one-line warning (None when not busy)."""
    if not (threads is None or threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool)
                                                     and threads >= 1)):
        raise ValueError(f"threads: expected a positive integer, 'auto' or None, got {threads!r}")
    reader = reader or ProcReader()
    cores, cpus = usable_cores()
    before = reader.process_times()
    m = measure_others(window_s, reader=reader, sleep=sleep)
    top = _busiest(before, reader.process_times(), m["window_s"])
    auto = auto_threads("auto", other_cpu=m["other_cpu"] or 0.0, cores=cores)
    used = cores if threads is None else auto if threads == "auto" else min(int(threads), cores)
    busy, _ = judge(m["other_cpu"], None, threads=used, cores=cores, window_s=m["window_s"], tick=reader.tick)
    info = {
        "cores": cores, "threads_requested": threads, "threads": used, "auto_threads": auto,
        "other_cpu": None if m["other_cpu"] is None else round(m["other_cpu"], 3),
        "steal_cpu": None if m["steal_cpu"] is None else round(m["steal_cpu"], 3), "window_s": round(m["window_s"], 3),
        "loadavg": reader.loadavg(), "governor": reader.governor(cpus), "busy_cores": busy_cores(m["other_cpu"], cores),
        "top": top, "busy": busy,
    }
    info["message"] = preflight_line(info)
    info["neighbours"] = bool(not busy and neighbours_busy(info["other_cpu"]))
    info["note"] = neighbour_line(info)
    return info


def _busiest(before: dict, after: dict, window_s: float, n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` other processes that used the most CPU (>= 0.05 cores) between two readings."""
    top = []
    for pid, (name, cpu) in after.items():
        if pid != os.getpid() and pid in before and window_s > 0:
            share = (cpu - before[pid][1]) / window_s
            if share >= 0.05:
                top.append({"pid": pid, "name": name, "cpu": round(share, 2)})
    return sorted(top, key=lambda p: -p["cpu"])[:n]


def _top_text(info: dict[str, Any]) -> str:
    """The busiest other processes of a :func:`preflight` result, as "name cores, ..." ('' if none)."""
    return ", ".join(f"{p['name']} {p['cpu']:.2f}" for p in info.get("top") or [])


def preflight_line(info: dict[str, Any]) -> str | None:
    """The one-line warning with its remedy for a :func:`preflight` result (None when not busy)."""
    if not info.get("busy"):
        return None
    seen = [f"load average {' '.join(f'{x:g}' for x in info['loadavg'])}" if info.get("loadavg") else None,
            f"steal {info['steal_cpu']:.2f} cores (a busy VM neighbour)" if (info.get("steal_cpu") or 0) >= 0.05 else None,
            f"governor {info['governor']}" if info.get("governor") else None]
    top = _top_text(info)
    busiest = f"; busiest: {top}" if top else ""
    remedy = "stop them or wait for them to finish"
    if info.get("auto_threads", info["threads"]) < info["threads"]:
        remedy += f", or run with --threads auto ({info['auto_threads']} of {info['cores']} cores here)"
    details = ", ".join(s for s in seen if s) + busiest
    details = f" ({details.lstrip('; ')})" if details else ""
    return (f"warning: machine busy: other processes use {info['other_cpu']:.2f} of {info['cores']} cores"
            f"{details}; {info['threads']} threads would be timed on shared cores and cells "
            f"marked contended. Remedy: {remedy}")


def neighbour_line(info: dict[str, Any]) -> str | None:
    """The one-line note for a :func:`preflight` result whose ``neighbours`` are busy on the cores
    the sweep leaves free (None otherwise): its samples will not be marked contended, yet they share
    the machine."""
    if not info.get("neighbours"):
        return None
    top = _top_text(info)
    return (f"note: other processes use {info['other_cpu']:.2f} of {info['cores']} cores"
            f"{f' (busiest: {top})' if top else ''}, on cores the sweep's {info['threads']} thread(s) leave free: "
            f"they share caches, memory bandwidth and perhaps physical cores with it ({NEIGHBOUR_EFFECT}), "
            f"so cells timed while they run are "
            f"marked as timed beside busy neighbours and not fitted. For numbers to quote, stop them")


def warn_if_busy(info: dict[str, Any], stream=None) -> bool:
    """Print :func:`preflight_line` on stderr (or ``stream``) when busy, else the
    :func:`neighbour_line` when others are busy on the free cores; True if printed."""
    line = info.get("message") if "message" in info else preflight_line(info)
    line = line or info.get("note")
    if not line:
        return False
    print(line, file=stream if stream is not None else sys.stderr, flush=True)
    return True

"""`zoo` command line: parsing only; the work lives in zoo/, profiler/ and reports/.

User errors (a ZooError, a reports ReportError, or a bad option) print one line on stderr and exit
with code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The efficient-attention zoo: list mixers, profile them over lengths, compare results.",
)


def _user_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from reports.errors import ReportError
        from zoo.errors import ZooError

        try:
            return fn(*args, **kwargs)
        except (ZooError, ReportError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


_TABLE_FORMAT_HELP = "table (terminal, fitted to its width) | plain (aligned text) | md | csv | json [default: table on a terminal, plain in a pipe]"


def _table_format(fmt: str) -> str:
    from reports.text import resolve_table_format

    return resolve_table_format(fmt, sys.stdout.isatty())


@app.command("list")
@_user_errors
def list_cmd(
    pattern: str = typer.Argument("*", help="wildcard over mixer names, e.g. '*former'"),
    fmt: str = typer.Option("auto", "--format", help=_TABLE_FORMAT_HELP),
    markdown: bool = typer.Option(False, "--markdown", hidden=True, help="same as --format md"),
) -> None:
    """Table of every registered mixer: paper, year, complexity, capabilities."""
    from reports.errors import ReportError
    from reports.text import render_table, terminal_width
    from zoo.catalog import mixer_table, unknown_pattern_message

    fmt = "md" if markdown else _table_format(fmt)
    rows = mixer_table(pattern)
    if not rows:
        raise ReportError(unknown_pattern_message(pattern))
    title = f"zoo: {len(rows)} mixer{'s' if len(rows) != 1 else ''}" + (f" matching {pattern!r}" if pattern != "*" else "")
    typer.echo(render_table(
        rows, fmt, title=title, width=terminal_width(fmt), cut=("paper",),
        drop=("arxiv", "reduces length", "paper", "stochastic", "year"),
        hint="see `zoo info NAME` or --format csv",
    ))


@app.command("info")
@_user_errors
def info_cmd(
    name: str = typer.Argument(..., help="mixer name (see `zoo list`)"),
    dim: Optional[int] = typer.Option(None, help="model width for the parameter count (default: config default)"),
    heads: Optional[int] = typer.Option(None, help="heads for the parameter count (default: config default)"),
    fmt: str = typer.Option("auto", "--format", help=_TABLE_FORMAT_HELP + "; csv: the config fields"),
) -> None:
    """A mixer's spec, config fields (defaults and meaning) and parameter count."""
    from reports.text import render_info, terminal_width
    from zoo.catalog import mixer_info

    fmt = _table_format(fmt)
    typer.echo(render_info(mixer_info(name, dim=dim, heads=heads), fmt, width=terminal_width(fmt)))


def _declared_exponents() -> dict[str, dict[str, float]]:
    """{mixer: {"time": k, "memory": k}} from the registry, for the report's complexity summary."""
    from zoo import get_spec, list_mixers

    return {
        name: {"time": get_spec(name).time.exponent, "memory": get_spec(name).memory.exponent}
        for name in list_mixers()
    }


@app.command("compare")
@_user_errors
def compare_cmd(
    files: Optional[list[Path]] = typer.Argument(
        None, help="profiles (.jsonl from `zoo profile` / `zoo fidelity`); none: run a quick sweep first"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="report folder [default: reports-out/<first file>]"),
    formats: str = typer.Option("html,md", "--format", help="comma list of html, md, tex"),
    baseline: Optional[str] = typer.Option(
        None, help="label or mixer the ratios refer to [default: the sweep's own baseline, else softmax]"
    ),
) -> None:
    """Report from sweeps: consumption tables, scaling plots, exponents, crossovers, fidelity."""
    from reports import build_report, parse_formats

    parse_formats(formats)  # a typo fails before a sweep is run
    if not files:
        import datetime

        from profiler import run_profile
        from profiler.fidelity import run_fidelity

        out = out or Path("reports-out") / "quick"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        files = [out / f"profile-{stamp}.jsonl", out / f"fidelity-{stamp}.jsonl"]
        typer.echo(f"no profile given: running the quick sweep into {files[0]}", err=True)
        run_profile(preset="quick", out=files[0])
        typer.echo(f"fidelity against exact softmax into {files[1]}", err=True)
        run_fidelity(lengths=(256, 512, 1024), seeds=2, out=files[1],
                     progress=lambda cell: typer.echo(f"  fidelity {cell}", err=True))
    out = out or Path("reports-out") / files[0].stem
    report = build_report(files, out, formats=formats, baseline=baseline, declared=_declared_exponents)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for kind in ("html", "md", "tex", "csv"):
        if kind in report.files:
            typer.echo(str(report.files[kind]))
    typer.echo(f"{len(report.figures)} figure files in {report.out_dir / 'figures'}")


@app.command("fidelity")
@_user_errors
def fidelity_cmd(
    mixers: Optional[str] = typer.Option(
        None, help="comma list of mixers [default: every mixer with spec.approximates_softmax]"
    ),
    lengths: str = typer.Option("256..4k", help="sequence lengths: 256..4k (powers of two), 256,1000,4k"),
    seeds: int = typer.Option(3, help="seeds per cell (new weights, inputs and random features each)"),
    batch: int = typer.Option(1, help="batch size B"),
    dim: Optional[int] = typer.Option(None, help="model width D [default: each mixer's config default]"),
    heads: Optional[int] = typer.Option(None, help="heads [default: each mixer's config default]"),
    dtype: str = typer.Option("fp32", help="fp32 | fp64 | bf16 | fp16"),
    device: str = typer.Option("auto", help="auto (the GPU if present) | cpu | cuda"),
    causal: bool = typer.Option(False, "--causal", help="causal attention on both sides"),
    out: Path = typer.Option(Path("runs") / "fidelity.jsonl", "--out", help="JSONL file the records are appended to"),
) -> None:
    """Relative error of each softmax approximation against exact softmax attention, by length."""
    from profiler.fidelity import run_fidelity

    names = [m.strip() for m in mixers.split(",") if m.strip()] if mixers else None
    records = run_fidelity(
        mixers=names, lengths=lengths, seeds=seeds, batch=batch, dtype=dtype, device=device, causal=causal,
        overrides={k: v for k, v in (("dim", dim), ("heads", heads)) if v is not None}, out=out, progress=lambda cell: typer.echo(f"  {cell}", err=True),
    )
    for r in records:
        result = f"rel. error {r['rel_error']:.3g} ± {r['rel_error_std']:.1g}, cosine {r['cosine']:.4f}" \
            if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        typer.echo(f"{r['label']:24s} T={r['T']:<6d} {result}")
    typer.echo(f"{len(records)} records appended to {out}")


@app.command("profile")
@_user_errors
def profile_cmd(
    mixers: Optional[str] = typer.Option(
        None, help="comma list, overrides in brackets: 'softmax[impl=eager],ponet', wildcards ('*former') [default: all]"
    ),
    lengths: Optional[str] = typer.Option(None, help="1k..16k (doubling), 1k..16k:x1.5, 512,2048,3000; k/m suffixes [default: 1k..16k]"),
    mode: Optional[str] = typer.Option(None, "--mode", help="forward | train | both | decode (generation: time per new token after a prompt of T) [default: both]"),
    scope: Optional[str] = typer.Option(None, help="mixer (the mixer alone) | model (LRA-style encoder + loss + optimizer)"),
    preset: Optional[str] = typer.Option(None, help="default | quick | ponet-table2 (explicit options override it)"),
    batch: Optional[int] = typer.Option(None, help="batch size B [default: 1]"),
    dim: Optional[int] = typer.Option(None, help="model width D [default: 256]"),
    heads: Optional[int] = typer.Option(None, help="heads [default: 4]"),
    depth: Optional[int] = typer.Option(None, help="blocks in --scope model [default: 2]"),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16 | fp64"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:i]"),
    causal: bool = typer.Option(False, "--causal", help="causal mixing (mixers without a causal variant: n/a)"),
    pad_fraction: float = typer.Option(
        0.0, "--pad-fraction", help="the last F of every sequence is padding and the mixer gets the mask [default: 0]"
    ),
    compile: bool = typer.Option(
        False, "--compile", help="run each step under torch.compile (inductor); compile time recorded apart"
    ),
    out: Path = typer.Option(Path("runs") / "profile.jsonl", "--out", help="JSONL file of records"),
    resume: bool = typer.Option(False, "--resume", help="run only the cells missing from --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds records"),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="each cell in a fresh process"),
    timeout: float = typer.Option(300.0, help="seconds per cell before it is killed and recorded as timeout"),
    memory_budget: Optional[str] = typer.Option(None, help="e.g. 16g [default: 90% of free RAM / GPU memory]"),
    baseline: str = typer.Option("softmax", help="label or mixer the end table's ratios refer to"),
    threads: Optional[str] = typer.Option(
        None, help="torch CPU threads: a number, or auto (the cores other processes leave free) [default: torch's default]"
    ),
    contention: bool = typer.Option(
        True, "--contention/--no-contention",
        help="CPU: check the machine before the sweep and retake timing samples during which other processes used its cores",
    ),
    time_budget: Optional[float] = typer.Option(None, help="seconds of timed calls per cell (per round) [default: 2]"),
    rounds: int = typer.Option(
        1, help="time each cell in this many processes, interleaved with the other cells of its length; the "
                "fastest clean round is kept (a slow process on a shared VM is one of k, not the cell)",
    ),
    interleave: bool = typer.Option(
        False, "--interleave/--no-interleave",
        help="after every cell is measured, time the cells again in turn in one process, a sample of each in turn, so "
             "ratios and scaling see the same spells of a drifting machine (replaces --rounds)",
    ),
    cpu_heap: str = typer.Option(
        "managed", help="managed (memory pass in a tracking heap, timing in a caching heap, no page-fault noise) | system (glibc as is)"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or end table"),
    executor: Optional[str] = typer.Option(
        None, "--executor", help="fork | spawn | inline | ray | submitit [default: fork on CPU, spawn on CUDA]"
    ),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: 'auto' or host:port of a cluster [default: start a local one]"),
    ray_cpus: Optional[int] = typer.Option(None, "--ray-cpus", help="ray: CPUs of the local cluster [default: every core]"),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="submitit: SLURM partition"),
    slurm_array_parallelism: Optional[int] = typer.Option(
        None, "--slurm-array-parallelism", help="submitit: jobs of the array running at once [default: 32]"
    ),
    submitit_folder: Optional[Path] = typer.Option(None, "--submitit-folder", help="submitit: job logs [default: runs/submitit]"),
) -> None:
    """Sweep mixers over lengths: time, peak memory and FLOPs per cell, one JSON line each."""
    from profiler import run_profile
    from profiler.exec_options import executor_options

    options = executor_options(executor, ray_address=ray_address, ray_cpus=ray_cpus, slurm_partition=slurm_partition,
                               slurm_array_parallelism=slurm_array_parallelism,
                               submitit_folder=str(submitit_folder) if submitit_folder else None)
    path = run_profile(executor=executor, executor_options=options,
        mixers=mixers, lengths=lengths, modes=mode, scope=scope, preset=preset, batch=batch, dim=dim, heads=heads,
        depth=depth, dtype=dtype, device=device, causal=causal, pad_fraction=pad_fraction, compile=compile, out=out,
        resume=resume, overwrite=overwrite,
        isolate=isolate, timeout=timeout, memory_budget=memory_budget, baseline=baseline, threads=_threads(threads), contention=contention,
        time_budget=time_budget, rounds=rounds, interleave=interleave, cpu_heap=cpu_heap, progress=not quiet,
        command=[Path(sys.argv[0]).name, *sys.argv[1:]],
    )
    typer.echo(f"records in {path}", err=True)


def _threads(text: str | None) -> int | str | None:
    """--threads: a positive integer or "auto" (anything else: the settings' one-line error)."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    return int(text) if text.strip().isdigit() else text


def _lr_seeds(text: str | None) -> int | str | None:
    """--lr-seeds: a positive integer or "all" (anything else: the settings' one-line error)."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return "all"
    return int(text) if text.strip().isdigit() else text


@app.command("quality")
@_user_errors
def quality_cmd(
    tasks: Optional[str] = typer.Option(None, help="comma list of mqar, selective_copy, listops, ends [default: all four]"),
    mixers: Optional[str] = typer.Option(None, help="as in `zoo profile`: 'softmax[impl=eager],ponet', '*former' [default: all]"),
    lengths: Optional[str] = typer.Option(None, help="sequence lengths: 256,1k or 64..512 [default: 64]"),
    dim: Optional[int] = typer.Option(None, help="model width D [default: 64]"),
    depth: Optional[int] = typer.Option(None, help="encoder blocks [default: 2]"),
    heads: Optional[int] = typer.Option(None, help="heads per mixer [default: 2]"),
    token_shift: Optional[bool] = typer.Option(None, "--token-shift/--no-token-shift",
                                               help="add W x (previous token's embedding) to each embedding [default: on]"),
    seeds: Optional[int] = typer.Option(None, help="seeds per (mixer, task, T) [default: 3]"),
    lr_seeds: Optional[str] = typer.Option(None, "--lr-seeds", help="how many seeds try every lr; the others run at the lr "
                                           "chosen on validation ('all': every seed tries every lr) [default: 1]"),
    jobs: Optional[int] = typer.Option(None, help="cells trained at once, one process each [default: 2]"),
    budget: Optional[str] = typer.Option(None, help="per cell: steps (150) or wall clock (30s, 5m); per task: 100,mqar=150 "
                                         "[default: 100,mqar=150 steps]"),
    lrs: Optional[str] = typer.Option(None, help="learning-rate grid, chosen on validation [default: 1e-3,3e-3]"),
    batch: Optional[int] = typer.Option(None, help="sequences per step [default: 16]"),
    task_settings: Optional[str] = typer.Option(None, "--task-settings", help="generator settings: mqar.num_kv=4,mqar.num_keys=16"),
    preset: Optional[str] = typer.Option(None, help="default | quick (CI, minutes) | lra (LRA ListOps model settings, GPU-sized)"),
    quick: bool = typer.Option(False, "--quick", help="the quick preset (CI-sized; checks the pipeline)"),
    listops_dir: Optional[Path] = typer.Option(None, help="folder with the LRA ListOps TSVs (or pickles) to use instead of generated ListOps"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="load processed LRA pickles (unpickling runs code: trusted files only)"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads [default: 1]"),
    out: Path = typer.Option(Path("runs") / "quality.jsonl", "--out", help="JSONL file of records"),
    resume: bool = typer.Option(False, "--resume", help="run only the cells missing from --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds records"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train every mixer on synthetic long-range tasks; accuracy per (task, T, mixer), one JSON line per run."""
    from profiler.quality.sweep import parse_lrs, parse_tasks, resolve_settings, run_quality
    from reports.quality import format_summary, quality_frame, select_best
    from zoo.errors import ZooValueError

    if quick and preset not in (None, "quick"):
        raise ZooValueError(f"--quick: conflicts with --preset {preset}")
    settings = resolve_settings(
        "quick" if quick else preset, tasks=parse_tasks(tasks) if tasks is not None else None, mixers=mixers,
        lengths=lengths, dim=dim, depth=depth, heads=heads, token_shift=token_shift, seeds=seeds,
        lr_seeds=_lr_seeds(lr_seeds), jobs=jobs, budget=budget,
        lrs=parse_lrs(lrs) if lrs is not None else None, batch=batch, threads=threads, task_settings=task_settings,
        listops_dir=str(listops_dir) if listops_dir else None, allow_pickle=allow_pickle or None,
    )
    records = run_quality(settings, out=out, resume=resume, overwrite=overwrite, progress=not quiet,
                          command=[Path(sys.argv[0]).name, *sys.argv[1:]])
    typer.echo(format_summary(select_best(quality_frame(records))))
    typer.echo(f"records in {out}", err=True)


@app.command("project")
@_user_errors
def project_cmd(
    mixers: Optional[str] = typer.Option(None, help="comma list as for profile [default: all]"),
    lengths: str = typer.Option("1k..1m", help="lengths, e.g. 1k..1m (nothing is allocated: fake tensors)"),
    mode: str = typer.Option("both", "--mode", help="forward | train | both"),
    scope: Optional[str] = typer.Option(None, help="mixer | model"),
    batch: Optional[int] = typer.Option(None, help="batch size B [default: 1]"),
    dim: Optional[int] = typer.Option(None, help="model width D [default: 256]"),
    heads: Optional[int] = typer.Option(None, help="heads [default: 4]"),
    depth: Optional[int] = typer.Option(None, help="blocks in --scope model [default: 2]"),
    dtype: str = typer.Option("bf16", help="fp32 | bf16 | fp16 | fp64"),
    device: str = typer.Option("h100", help="a100 | h100 | h200 | l4 | cpu (this machine, measured once) | a --devices-file entry"),
    devices_file: Optional[Path] = typer.Option(None, "--devices-file", help="TOML or JSON table adding devices"),
    memory_budget: Optional[str] = typer.Option(None, help="e.g. 70g [default: 90% of the device's memory]"),
    baseline: str = typer.Option("softmax", help="the crossovers' and ratios' reference"),
    against: Optional[Path] = typer.Option(None, "--against", help="a measured profile: project its cells and add the calibration table"),
    out: Path = typer.Option(Path("runs") / "projection.jsonl", "--out", help="JSONL file of projection records"),
    report: Optional[Path] = typer.Option(None, "--report", help="also write the markdown tables here"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds records"),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="--device cpu: measure this CPU again (on a quiet machine)"),
) -> None:
    """Project peak memory, FLOPs and a roofline time to lengths and GPUs this machine lacks."""
    from profiler.project_run import run_project

    result = run_project(
        mixers=mixers, lengths=lengths, modes=mode, scope=scope, batch=batch, dim=dim, heads=heads, depth=depth,
        dtype=dtype, device=device, devices_file=str(devices_file) if devices_file else None,
        memory_budget=memory_budget, baseline=baseline, against=str(against) if against else None, out=out,
        overwrite=overwrite, recalibrate=recalibrate, command=[Path(sys.argv[0]).name, *sys.argv[1:]],
    )
    typer.echo(result["markdown"])
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(result["markdown"])
    typer.echo(f"{len(result['records'])} projection records in {result['path']} ({result['seconds']:.1f} s)", err=True)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

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


@app.command("list")
@_user_errors
def list_cmd(
    pattern: str = typer.Argument("*", help="wildcard over mixer names, e.g. '*former'"),
    markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table (used for the README)"),
) -> None:
    """Table of every registered mixer: paper, year, complexity, capabilities."""
    from zoo.catalog import mixer_table, render_markdown_table, render_rich_table

    rows = mixer_table(pattern)
    if markdown:
        typer.echo(render_markdown_table(rows))
    else:
        render_rich_table(rows)


@app.command("info")
@_user_errors
def info_cmd(
    name: str = typer.Argument(..., help="mixer name (see `zoo list`)"),
    dim: Optional[int] = typer.Option(None, help="model width for the parameter count (default: config default)"),
    heads: Optional[int] = typer.Option(None, help="heads for the parameter count (default: config default)"),
) -> None:
    """A mixer's spec, config fields (defaults and meaning) and parameter count."""
    from zoo.catalog import render_info

    render_info(name, dim=dim, heads=heads)


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
        overrides={"dim": dim, "heads": heads}, out=out, progress=lambda cell: typer.echo(f"  {cell}", err=True),
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
    mode: Optional[str] = typer.Option(None, "--mode", help="forward | train | both [default: both]"),
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
    out: Path = typer.Option(Path("runs") / "profile.jsonl", "--out", help="JSONL file of records"),
    resume: bool = typer.Option(False, "--resume", help="run only the cells missing from --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds records"),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="each cell in a fresh process"),
    timeout: float = typer.Option(300.0, help="seconds per cell before it is killed and recorded as timeout"),
    memory_budget: Optional[str] = typer.Option(None, help="e.g. 16g [default: 90% of free RAM / GPU memory]"),
    baseline: str = typer.Option("softmax", help="label or mixer the end table's ratios refer to"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads [default: torch's default]"),
    time_budget: Optional[float] = typer.Option(None, help="seconds of timed calls per cell [default: 2]"),
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
        depth=depth, dtype=dtype, device=device, causal=causal, pad_fraction=pad_fraction, out=out, resume=resume, overwrite=overwrite,
        isolate=isolate, timeout=timeout, memory_budget=memory_budget, baseline=baseline, threads=threads,
        time_budget=time_budget, cpu_heap=cpu_heap, progress=not quiet, command=[Path(sys.argv[0]).name, *sys.argv[1:]],
    )
    typer.echo(f"records in {path}", err=True)


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

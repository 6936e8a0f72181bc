"""The ``caviar`` command. Every error caviar knows about is one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from orchestrator.errors import CaviarError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="caviar: hyperparameter sweeps of PyTorch models on Ray. Sample, prune, narrow, ensemble.",
)

TaskArg = Annotated[str, typer.Argument(help="Task file (examples/digits_mlp.py) or module:attr.")]
SweepArg = Annotated[str, typer.Argument(help="Sweep directory (STORAGE/NAME), local path or URI.")]


def fail(message: str) -> None:
    typer.echo(f"caviar: error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def run(
    task: TaskArg,
    trials: Annotated[int | None, typer.Option(help="Total trials over all stages.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epoch budget of the last (longest) stage.")] = None,
    plan: Annotated[str | None, typer.Option(help="Explicit stages, TRIALSxEPOCHS each: '64x1,24x5,8x20'.")] = None,
    stages: Annotated[int | None, typer.Option(help="Stages in the derived plan; 1 = plain random search.")] = None,
    slots: Annotated[
        int | None, typer.Option(help="Trials trained at once (default: cluster CPUs / cpus-per-trial).")
    ] = None,
    storage: Annotated[str | None, typer.Option(help="Where sweeps live: a path or pyarrow.fs URI.")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name (default: TASK-DATE-TIME).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sweep seed: same seed, same configs in the same order.")] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="TOML file with [run] settings and [space] ranges.")
    ] = None,
    pruner: Annotated[str | None, typer.Option(help="asha, median or none.")] = None,
    sampler: Annotated[str | None, typer.Option(help="random, sobol, lhs or tpe.")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs each trial holds.")] = None,
    gpus_per_trial: Annotated[
        float | None, typer.Option(help="GPUs each trial holds; 0.25 packs four on a GPU.")
    ] = None,
    resource: Annotated[
        list[str] | None, typer.Option(help="Custom Ray resource per trial, NAME=AMOUNT; repeatable.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (autocast; fp16 scales the loss).")] = None,
    shared_storage: Annotated[bool, typer.Option(help="A local --storage path is a mount every node shares.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto or ray://HOST:10001 (default: start Ray here).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing sweep of the same name.")] = False,
    ensemble: Annotated[bool, typer.Option(help="Build ensembles when the sweep ends.")] = True,
    plain: Annotated[bool, typer.Option(help="Log lines instead of the live view.")] = False,
    report: Annotated[bool, typer.Option(help="Write SWEEP/report.html (plots) when the sweep ends.")] = True,
    dashboard: Annotated[bool, typer.Option(help="Start Ray's dashboard with a local Ray.")] = False,
    dashboard_host: Annotated[str | None, typer.Option(help="Where it listens (default: 127.0.0.1).")] = None,
    fuse: Annotated[
        str | None, typer.Option(help="Train same-shape trials as one batched model: auto, on or off.")
    ] = None,
    array_size: Annotated[str | None, typer.Option(help="Trials per fused array: auto (probe) or an integer.")] = None,
    seed_copies: Annotated[
        int | None,
        typer.Option(help="After the last stage, train the best config N more times from new seeds (a seed ensemble)."),
    ] = None,
    wait_for_cluster_seconds: Annotated[
        float | None, typer.Option(help="With --address: how long to wait for a node to fit a trial (default 600).")
    ] = None,
) -> None:
    """Run a sweep: sample, train on Ray actors, prune, narrow, and write everything to Parquet."""
    from orchestrator.api import parse_resources, run_sweep
    from orchestrator.progress import Progress

    overrides: dict[str, Any] = dict(
        trials=trials,
        epochs=epochs,
        plan=plan,
        stages=stages,
        slots=slots,
        storage=storage,
        name=name,
        seed=seed,
        pruner=pruner,
        sampler=sampler,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        device=device,
        address=address,
        overwrite=overwrite or None,
        ensemble=ensemble,
        precision=precision,
        shared_storage=shared_storage or None,
        fuse=fuse,
        dashboard=dashboard or None,
        dashboard_host=dashboard_host,
        seed_copies=seed_copies,
        wait_for_cluster_seconds=wait_for_cluster_seconds,
        array_size=int(array_size) if array_size and array_size.isdigit() else array_size,
    )
    if resource:
        overrides["resources"] = parse_resources(resource)
    from orchestrator.progress import quiet_ray, starting_line

    ray_log = os.path.join(tempfile.gettempdir(), f"caviar-ray-{os.getpid()}.log")
    starting = starting_line(address, slots, ray_log)
    task_ref = task_file_ref(task)  # before the run: a job's working directory may not outlive it
    with exit_on_interrupt(task_ref), Progress(force_plain=plain, starting=starting) as progress:
        quiet_ray(ray_log)  # after the first line: importing Ray takes a second or two
        result = run_sweep(task, config_file=config, on_tick=progress, **overrides)
    print_result(result, report=report, task_ref=task_ref)


@contextmanager
def exit_on_interrupt(task_ref: str | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM during a sweep: one line saying how to go on, exit 130 (orchestrator/interrupt.py)."""
    from orchestrator.interrupt import EXIT_CODE, SweepInterrupted, print_hint

    try:
        yield
    except SweepInterrupted as stop:
        if stop.path:
            print_hint(stop.path, task_ref)
        else:
            typer.echo("interrupted before the sweep began: nothing was written", err=True)
        raise typer.Exit(EXIT_CODE) from None


def print_result(result: Any, *, report: bool = True, task_ref: str | None = None) -> None:
    """The answer: top trials, edge warnings, the chosen ensemble against the best single model, how to load
    it, where the tables and the report are; exit 2 if it stopped early. The one place a run's end is printed."""
    from orchestrator.answer import edge_lines, ensemble_lines
    from orchestrator.api import load
    from orchestrator.cli_report import write_sweep_report
    from orchestrator.storage import redact_uri

    tables = load(result.path)
    print_top(tables, 5)
    for line in edge_lines(tables.events.to_pylist()):
        typer.echo(line)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}: the next sweep should look beyond it", fg="yellow", err=True)
    print_failures(tables.trials.to_pylist())
    if result.aborted:
        fail(f"sweep stopped early: {result.aborted}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
    typer.echo(f"\n{counts}. Results (Parquet): {redact_uri(result.path)}")
    for line in ensemble_lines(result.path, task_ref):
        typer.echo(line)
    if report:
        written = write_sweep_report(result.path)
        if written:
            typer.echo(f"Report: {written}")


def task_file_ref(task: str | None) -> str | None:
    """The task as a load line should name it: a file as an absolute path, a module as given."""
    if not task:
        return None
    target, sep, attr = task.partition(":")
    if not target.endswith(".py") or os.path.isabs(target):
        return task
    try:
        return os.path.abspath(target) + sep + attr
    except OSError:  # a job's working directory can be gone by the end of its run
        return task


StorageOption = Annotated[
    str | None, typer.Option(help="Storage folder the sweep name is relative to (caviar ls STORAGE lists them).")
]


def print_failures(trials: list[dict[str, Any]]) -> None:
    """The most common errors of failed trials, with counts and trial ids (orchestrator/failures.py)."""
    from orchestrator.failures import error_summary

    for line in error_summary(trials):
        typer.secho(line, fg="red")


@app.command()
def status(sweep: SweepArg, storage: StorageOption = None) -> None:
    """Trials by status and stage, read from the sweep's Parquet tables only."""
    from orchestrator.answer import format_config
    from orchestrator.api import load
    from orchestrator.sweeps import resolve_sweep

    tables = load(resolve_sweep(sweep, storage))
    trials = tables.trials.to_pylist()
    by_stage: dict[int, dict[str, int]] = {}
    for t in trials:
        counts = by_stage.setdefault(t["stage"], {})
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    row = tables.sweep.to_pylist()[0]
    typer.echo(f"sweep {row['name']} (task {row['task']}, seed {row['seed']})")
    for stage, counts in sorted(by_stage.items()):
        text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        typer.echo(f"  stage {stage}: {text}")
    typer.echo(f"  {tables.metrics.num_rows} epochs recorded, {tables.checkpoints.num_rows} checkpoints kept")
    best = tables.top(1).to_pylist()
    if best:
        t = best[0]
        typer.echo(f"  best: trial {t['trial_id']} (stage {t['stage']}) score {t['best_score']:.4f}: "
                   f"{format_config(t['config'])}")
    print_failures(trials)


@app.command()
def top(
    sweep: SweepArg,
    k: Annotated[int, typer.Option("-k", help="How many trials.")] = 10,
    storage: StorageOption = None,
) -> None:
    """The best trials with their configs (later stages first: they trained longest)."""
    from orchestrator.api import load
    from orchestrator.sweeps import resolve_sweep

    if k < 1:
        fail("option '-k': expected a positive integer")
    print_top(load(resolve_sweep(sweep, storage)), k)


def print_top(tables: Any, k: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from orchestrator.answer import format_config

    best = tables.top(k).to_pylist()
    table = Table(title=f"top {len(best)} trials")
    for column in ("trial", "stage", "status", "epochs", "best score", "val loss", "config"):
        table.add_column(column)
    for t in best:
        config = format_config(t["config"])  # active parameters only: no momentum=None
        table.add_row(
            str(t["trial_id"]),
            str(t["stage"]),
            t["status"],
            str(t["epochs_run"]),
            f"{t['best_score']:.4f}",
            f"{t['best_val_loss']:.4f}" if t["best_val_loss"] is not None else "-",
            config,
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def main() -> None:
    usage_error = typer.BadParameter.__mro__[1]  # click's UsageError, whether typer vendors click or not
    try:
        code = app(standalone_mode=False)  # click's usage errors come here, to be printed as one line
    except CaviarError as exc:
        typer.echo(f"caviar: error: {exc}", err=True)
        sys.exit(2)
    except usage_error as exc:  # a bad option value, an unknown option or verb, a missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # `caviar` alone: the help, as before
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx else "caviar"
        message = " ".join(exc.format_message().split())
        typer.echo(f"caviar: error: {message} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


# Command modules register their verbs on `app` when imported; one line each.
import orchestrator.cli_check  # noqa: E402,F401
import orchestrator.cli_report  # noqa: E402,F401

if __name__ == "__main__":
    __import__("orchestrator.cli", fromlist=["entry_point"]).entry_point()  # noqa: E701 (python -m: every verb)
import orchestrator.cli_cluster  # noqa: E402,F401
import orchestrator.cli_ensemble  # noqa: E402,F401
import orchestrator.cli_resume  # noqa: E402,F401


def entry_point() -> None:
    """The ``caviar`` script: :func:`main`, then an exit that skips native teardown.

    Python's own clean-up runs (atexit: Ray's shutdown, flushed output); the C++ static destructors
    do not: pyarrow's thread pools can abort a finished process there ("terminate called without
    an active exception", exit 134), which would turn a successful command into a failure.
    """
    import atexit

    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            sys.stderr.write(f"{done.code}\n")
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

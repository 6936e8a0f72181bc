"""Reading a sweep back: ``caviar report`` (a self-contained HTML page of plots) and ``caviar ls`` (the sweeps)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from orchestrator.app.cli_common import StorageOption, SweepArg, app, fail, find_sweep


def default_report_file(sweep: str) -> str:
    """``NAME-report.html`` in the working directory, NAME the sweep's last path part (a URI's query left out)."""
    from orchestrator.store.storage import split_query

    path = split_query(sweep)[0]
    if "://" not in path:  # "." inside the sweep folder, "../digits": the folder's own name, never ".-report.html"
        path = os.path.abspath(path)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "sweep"
    return f"{name}-report.html"


@app.command()
def report(
    sweep: SweepArg,
    out: Annotated[str | None, typer.Option(help="The HTML file to write (default: SWEEP_NAME-report.html here).")]
    = None,
    png_dir: Annotated[str | None, typer.Option(help="Also write each plot as a PNG into this folder.")] = None,
    storage: StorageOption = None,
) -> None:
    """Plots of a sweep in one HTML file: hyperparameters, learning curves, gap, update ratios, importance."""
    from orchestrator.app.report import build_report, write_report

    built = build_report(find_sweep(sweep, storage))
    paths = write_report(built, out or default_report_file(sweep), png_dir)
    for warning in built.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    typer.echo(f"{len(built.figures)} plots -> {paths[0]}")
    if png_dir:
        typer.echo(f"PNGs: {len(paths) - 1} files in {png_dir}")


@app.command("ls")
def list_command(
    folder: Annotated[str | None, typer.Argument(
        metavar="STORAGE", help="Storage folder (a path or pyarrow.fs URI) whose sweeps to list (default: caviar-runs, "
        "where caviar run writes without --storage).")] = None,
    storage: Annotated[str | None, typer.Option(help="The same folder as an option, as status and top take it.")]
    = None,
) -> None:
    """The sweeps in a storage folder: name, task, started, state, trials, best score, chosen ensemble."""
    import sys

    from orchestrator.spec.settings import RunSettings

    if folder is not None and storage is not None and folder != storage:
        fail(f"storage: given twice, {folder!r} and --storage {storage!r}; give one")
    storage = folder or storage or RunSettings.storage

    from rich.console import Console
    from rich.table import Table

    from orchestrator.app.answer import shown_number, shown_score
    from orchestrator.store.storage import redact_uri
    from orchestrator.store.sweeps import list_sweeps

    rows = list_sweeps(storage)
    if not rows:
        from orchestrator.store import schema
        from orchestrator.store.storage import Storage

        if Storage.from_uri(storage).exists(schema.SWEEP_PATH):  # a sweep's own folder, given where its parent goes
            fail(f"{storage!r} is a sweep, not a storage folder of sweeps: caviar status {storage} shows it, caviar ls "
                 "of the folder above lists it with the others")
        fail(f"storage {storage!r}: no sweeps in it")  # fail() masks a URI's secret
    table = Table(title=f"{len(rows)} sweeps in {redact_uri(storage)}")
    for column in ("name", "task", "started (UTC)", "state", "trials", "best", "chosen ensemble"):
        table.add_column(column)
    for r in rows:
        started = r["started"].strftime("%Y-%m-%d %H:%M") if r["started"] is not None else "-"
        ensemble = r["ensemble"] or "-"
        if r.get("ensemble_test_objective") is not None:  # chosen by the task's own metric: that metric on test
            name, value = r["ensemble_test_objective"]
            ensemble += f" ({name} {shown_number(value)})"
        elif r["ensemble_test_accuracy"] is not None:
            ensemble += f" (test accuracy {r['ensemble_test_accuracy']:.4f})"
        elif r.get("ensemble_test_mse") is not None:
            ensemble += f" (test MSE {r['ensemble_test_mse']:.4g})"
        best = "-"
        if r["best_score"] is not None:
            name, value = shown_score(r["best_score"], r.get("objective"))
            best = f"{shown_number(value)} ({name})" if r.get("objective") else shown_number(value)
        table.add_row(r["name"], r["task"] or "-", started, r["state"], str(r["trials"]), best, ensemble)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)

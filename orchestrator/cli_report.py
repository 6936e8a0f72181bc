"""``caviar report SWEEP_DIR``: a self-contained HTML page of plots about a sweep (and PNGs on request)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import SweepArg, app


@app.command()
def report(
    sweep: SweepArg,
    out: Annotated[str | None, typer.Option(help="The HTML file to write (default: SWEEP_NAME-report.html here).")]
    = None,
    png_dir: Annotated[str | None, typer.Option(help="Also write each plot as a PNG into this folder.")] = None,
) -> None:
    """Plots of a sweep in one HTML file: hyperparameters, learning curves, gap, update ratios, importance."""
    from orchestrator.report import build_report, write_report

    built = build_report(sweep)
    name = sweep.rstrip("/").rsplit("/", 1)[-1] or "sweep"
    paths = write_report(built, out or f"{name}-report.html", png_dir)
    for warning in built.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    typer.echo(f"{len(built.figures)} plots -> {paths[0]}")
    if png_dir:
        typer.echo(f"PNGs: {len(paths) - 1} files in {png_dir}")

"""``caviar check TASK``: the preflight sanity checks as a pass/fail table (exit 1 on a failure)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orchestrator.app.cli_common import TaskArg, app, fail
from orchestrator.errors import did_you_mean

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


@app.command()
def check(
    task: TaskArg,
    config: Annotated[str | None, typer.Option(
        help=r"TOML file with \[run] and \[space], as for 'caviar run --config': its ranges are the ones checked.")]
    = None,
    params: Annotated[str, typer.Option(
        help="Config to check: 'midpoint' of every range, 'sample', or a JSON object of values.")] = "midpoint",
    seed: Annotated[int, typer.Option(help="Seed of the model, the sample and the examples.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "cpu",
    examples: Annotated[int, typer.Option(help="Examples in the overfitting subset.")] = 20,
    steps: Annotated[int, typer.Option(help="Most Adam steps spent overfitting them.")] = 500,
    dims: Annotated[int, typer.Option(help="Gradient-checked dimensions per parameter tensor.")] = 10,
    tolerance: Annotated[float, typer.Option(help="Allowed relative distance of the initial loss from ln C.")] = 0.5,
    expected_loss: Annotated[float | None, typer.Option(help="Expected initial loss when it is not ln C.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show the gradient check of every parameter tensor.")] = False,
) -> None:
    """Sanity-check a task before a sweep: initial loss, L2, overfitting 20 examples, gradients, the space's ends
    and which of its entries the task reads."""
    from orchestrator.spec.task import load_task
    from worker.check.preflight import run_preflight

    if examples < 1 or steps < 1 or dims < 1:
        fail("options '--examples', '--steps' and '--dims' must be positive")
    if tolerance <= 0:
        fail("option '--tolerance': expected a positive number")
    device = check_device(device)
    if config is not None and (config in ("midpoint", "sample") or config.lstrip().startswith("{")):
        params, config = config, None  # the old meaning of --config, still understood
    loaded = load_task(task)
    if config is not None:  # the same TOML `caviar run --config` takes: its [space] ranges, its [run] checked too
        from dataclasses import replace

        from orchestrator.app.api import build_settings

        _settings, space = build_settings(loaded, config, {})
        loaded = replace(loaded, space=space)
    chosen: dict[str, Any] | None = None
    if params not in ("midpoint", "sample"):
        try:
            chosen = json.loads(params)
        except json.JSONDecodeError:
            chosen = None
        if not isinstance(chosen, dict):
            fail(f"option '--params': expected midpoint, sample or a JSON object, got {params!r}")
        # a misspelt key reached the model as an extra entry it never read, and the check passed the config without it
        extra = [k for k in chosen if k not in loaded.space]
        if extra:
            fail(f"option '--params': {extra[0]!r} is not a parameter of the task's space"
                 f"{did_you_mean(extra[0], list(loaded.space))} (its parameters: {', '.join(loaded.space)})")
        chosen = {**loaded.space.fixed, **chosen}
        missing = [k for k in loaded.space.searched if k not in chosen]
        if missing:
            fail(f"option '--params': missing {', '.join(missing)} (null for a conditional one that is inactive)")
        from orchestrator.spec.builtin_values import check_builtin_values

        check_builtin_values(chosen, own_optimizer=loaded.get("build_optimizer") is not None)
    report = run_preflight(loaded, config=chosen, how="sample" if params == "sample" else "midpoint", seed=seed,
                           device=device, overfit_examples=examples, overfit_steps=steps, dims_per_tensor=dims,
                           tolerance=tolerance, expected_loss=expected_loss)
    print_report(report, verbose=verbose)
    if not report.passed:
        raise typer.Exit(1)


def check_device(device: str) -> str:
    """``device`` as this machine has it; one line otherwise (was a traceback: "Torch not compiled with CUDA")."""
    from orchestrator.errors import ConfigError
    from worker.load.ensemble_model import checked_device

    try:
        return str(checked_device(device))
    except ConfigError as exc:
        fail(f"option '--device': {exc}")
        raise


def print_report(report: Any, *, verbose: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from orchestrator.search.space import shown_value

    console = Console()
    shown = ", ".join(f"{k}={shown_value(v)}" for k, v in report.config.items())
    console.print(f"config (regularisation off): {shown}")
    if getattr(report, "mode_note", ""):
        console.print(report.mode_note, style="yellow", soft_wrap=True, markup=False)
    table = Table(title=f"preflight: {report.title}")
    for column in ("check", "result", "measured", "expected", "note"):
        table.add_column(column)
    for c in report.checks:
        table.add_row(c.name, f"[{STYLE[c.status]}]{c.status.upper()}[/]", c.value, c.expected, c.detail)
    console.print(table)
    for line in report.space_notes:  # whole lines, not wrapped into the table's note column
        console.print(line, style="yellow", soft_wrap=True, markup=False)
    gradient = next((c for c in report.checks if c.name == "gradient check"), None)
    if report.tensors and (verbose or (gradient is not None and gradient.status != "pass")):
        detail = Table(title="gradient check by parameter tensor")
        for column in ("tensor", "shape", "dims", "max rel. error", "level", "kinks", "zero"):
            detail.add_column(column)
        for t in report.tensors:
            style = {"wrong": "bold red", "suspicious": "yellow"}.get(t.level, "green")
            detail.add_row(t.name, "x".join(map(str, t.shape)) or "scalar", str(t.dims), f"{t.max_rel_error:.1e}",
                           f"[{style}]{t.level}[/]", str(t.kinks), str(t.zeros))
        console.print(detail)
    verdict = "all checks passed" if report.passed else "some checks FAILED"
    console.print(f"[{'green' if report.passed else 'bold red'}]{verdict}[/]")

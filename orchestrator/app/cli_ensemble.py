"""``caviar ensemble SWEEP_DIR``: build a finished sweep's ensembles and compare them with the best single model."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from orchestrator.app.cli_common import STORAGE_HELP, SweepArg, app, fail, find_sweep
from orchestrator.errors import CaviarError


@app.command()
def ensemble(
    sweep: SweepArg,
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="single_ema, top_k, checkpoints, ema, seeds, greedy or soup; repeatable (default: all).",
    )] = None,
    k: Annotated[int, typer.Option("-k", help="Members of the top-k and EMA ensembles.")] = 5,
    metric: Annotated[str | None, typer.Option(
        help="Validation metric the builders rank by: accuracy or log_loss (default: accuracy; log_loss for a "
             "sweep ranked on val_loss or val_log_loss).")] = None,
    choose_by: Annotated[str | None, typer.Option(
        help="Validation metric that picks the best ensemble: accuracy or log_loss (default: log_loss).")] = None,
    device: Annotated[str, typer.Option(help="Where the soup is evaluated: auto, cpu or cuda.")] = "auto",
    task: Annotated[str | None, typer.Option(
        help="Your task file: builds the soup's models and scores the sweep's objective (a task metric).")] = None,
    trust_task_code: Annotated[bool, typer.Option(
        help="Run the task copy stored in the sweep, as --task does (checked against its sha256).")] = False,
    storage_folder: Annotated[str | None, typer.Option("--storage", help=STORAGE_HELP)] = None,
) -> None:
    """Ensembles from stored predictions, chosen on validation; test measured after. Writes ensembles/.

    A sweep whose objective is a task's own metric (or val_loss of its loss_fn) is chosen by that
    objective only with --task or --trust-task-code; without, by log loss, and the table says so.
    """
    from orchestrator.app.api import open_sweep
    from orchestrator.ensemble.ensemble_run import (
        STORED_OBJECTIVES,
        build_and_write,
        check_methods,
        has_soup,
        prediction_files,
        read_dataset,
        refuse_custom_kind,
        refuse_methods_kind_lacks,
    )
    from orchestrator.store import schema
    from orchestrator.store.lease import holder_alive, read_lease

    # `caviar ensemble NAME --storage runs`, as status and top take it
    sweep = find_sweep(sweep, storage_folder)

    if k < 1:
        fail("option '-k': expected a positive integer")
    methods = check_methods([m for item in method or [] for m in item.split(",") if m])
    storage = open_sweep(sweep)
    writer = read_lease(storage)
    if writer is not None and holder_alive(writer):  # its end rebuilds ensembles/ over whatever this one writes
        fail(f"sweep {sweep!r} is still being written by process {writer.pid} on {writer.host}, and its end builds "
             "the ensembles; run caviar ensemble once it has finished")
    if not schema.read_dataset_row(storage):  # a stopped sweep has none yet: resume it, not a word about its kind
        from orchestrator.app.api import unfinished_note

        if note := unfinished_note(storage):
            fail(f"sweep {sweep!r}: no trial has stored predictions yet{note}")
    refuse_custom_kind(storage, schema.read_dataset_row(storage).get("kind"))  # before any word about soups
    try:
        kind = read_dataset(storage).kind  # no trial stored predictions: that one line, not a word about soups first
        prediction_files(storage)
        refuse_methods_kind_lacks(kind, methods if method else None)
    except CaviarError as exc:
        fail(str(exc))
    soup = objective_for = None
    had_soup = has_soup(storage)
    if kind == "regression":  # it builds no soup: nothing to leave out, or to say
        methods = tuple(m for m in methods if m != "soup")
    if "soup" in methods and not method and not (task or trust_task_code):  # all methods by default: the rest
        if had_soup:  # rebuilding without it would delete the soup the sweep built: refuse before writing
            fail(f"{sweep} has a soup that only --task FILE or --trust-task-code can rebuild; pass one, or name the "
                 "other methods with --method to rebuild those and drop the soup")
        typer.echo("caviar: soup left out: it builds models with task code; pass --task FILE or --trust-task-code "
                   "to include it", err=True)
        methods = tuple(m for m in methods if m != "soup")
    if had_soup and "soup" not in methods:  # --method named others: the user's choice, said once
        typer.echo("caviar: soup dropped: --method did not name it; its row and weights file are deleted",
                   err=True)
    if "soup" in methods or task or trust_task_code:
        from orchestrator.spec.task_source import sweep_task
        from worker.load.objective import ensemble_objective  # torch loads here, only with task code
        from worker.load.soup import soup_builder

        if "soup" in methods:  # one line naming the option, before the models are built (torch's error otherwise)
            from worker.load.ensemble_model import checked_device

            try:
                checked_device(device)
            except CaviarError as exc:
                fail(f"option '--device': {exc}")
        purpose = "to build a soup" if "soup" in methods else "to score its objective"
        chosen = sweep_task(storage, task, trust_task_code=trust_task_code, purpose=purpose)
        soup = soup_builder(storage, chosen, device=device) if "soup" in methods else None

        def objective_for(dataset: Any) -> Any:
            return ensemble_objective(chosen, dataset)
    else:
        def objective_for(dataset: Any) -> Any:  # caviar's own metrics (val_mae, val_exact_match) need no task code
            if dataset.objective in (None, "val_loss", *STORED_OBJECTIVES.get(dataset.kind, ())):
                return None  # the stored metrics stand for these (and torch need not load)
            from worker.load.objective import ensemble_objective

            return ensemble_objective(None, dataset)
    try:
        records = build_and_write(storage, methods=methods, k=k, metric=metric, soup=soup,
                                  choose_by=choose_by or "log_loss", objective_for=objective_for,
                                  named=methods if method else ())
    except CaviarError:
        raise
    except Exception as exc:  # the user's model code, torch: one line naming it, as every CLI error
        message = (" ".join(str(exc).split()) or "(no message)")[:500]
        fail(f"building ensembles of {sweep}: {type(exc).__name__}: {message}")
    unused = unused_choice_options(records, kind, metric=metric, choose_by=choose_by)
    if unused:
        typer.echo(unused, err=True)
    print_ensembles(records)


def unused_choice_options(records: Sequence[Any], kind: str | None, *, metric: str | None,
                          choose_by: str | None) -> str | None:
    """One line when --metric or --choose-by was given but did not rank or choose: a regression's ensembles go by
    validation MSE, and a sweep's own objective (a task metric) replaces both."""
    given = [f"--{name.replace('_', '-')} {value}" for name, value in (("metric", metric), ("choose_by", choose_by))
             if value]
    chosen_by = records[0].detail.get("chosen_by") if records else None
    if not given or chosen_by in (None, "val_accuracy", "val_log_loss"):
        return None
    why = "a regression's ensembles are ranked and chosen by " if kind == "regression" and chosen_by == "val_mse" \
        else "the sweep's objective ranked and chose instead: "
    return f"caviar: {' and '.join(given)} not used: {why}{chosen_by}"


def relative_error_cut(single_accuracy: float | None, accuracy: float | None) -> float | None:
    """How much of the single model's test error an ensemble removes (0.15 = 15% fewer errors)."""
    if single_accuracy is None or accuracy is None or single_accuracy >= 1.0:
        return None
    return 1.0 - (1.0 - accuracy) / (1.0 - single_accuracy)


def print_ensembles(records: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    single = next((r for r in records if r.method == "single"), None)
    if any(getattr(r, "val_mse", None) is not None for r in records):
        print_regression_ensembles(records, single)
        return
    base = single.test_accuracy if single else None
    chosen_by = str(records[0].detail.get("chosen_by") or "val_accuracy / log loss").removeprefix("val_")
    table = Table(title=f"ensembles (chosen on validation {chosen_by.replace('_', ' ')}; * = best, what "
                        "load_ensemble(name='best') returns)")
    for column in ("name", "size", "val acc", "val log-loss", "test acc", "test log-loss", "test error cut"):
        table.add_column(column)
    objective = objective_column(records)
    if objective:
        table.add_column(objective)

    def num(x: float | None, fmt: str = ".4f") -> str:
        return "-" if x is None else format(x, fmt)

    for r in records:
        name = ("* " if r.chosen else "  ") + r.name
        cells = [name, str(r.size), num(r.val_accuracy), num(r.val_log_loss), num(r.test_accuracy),
                 num(r.test_log_loss), num(relative_error_cut(base, r.test_accuracy), "+.1%")]
        table.add_row(*cells, *([objective_cell(r)] if objective else []))
    Console(width=160 if not sys.stdout.isatty() else None).print(table)
    soup = next((r for r in records if r.method == "soup"), None)
    if soup is not None and soup.detail.get("note"):
        typer.echo(f"soup: {soup.detail['note']}")
    if records and records[0].detail.get("choice_note"):  # a task metric objective: say what chose instead
        typer.echo(f"ensembles: {records[0].detail['choice_note']}")


def objective_column(records: Sequence[Any]) -> str | None:
    """``brier val / test``: the header of the objective's column, when an objective chose (else None)."""
    if not records or "val_objective" not in records[0].detail:
        return None
    return f"{str(records[0].detail['chosen_by']).removeprefix('val_')} val / test"


def objective_cell(record: Any) -> str:
    from orchestrator.app.answer import shown_number

    return (f"{shown_number(record.detail.get('val_objective'), '.4g')} / "
            f"{shown_number(record.detail.get('test_objective'), '.4g')}")


def print_regression_ensembles(records: Sequence[Any], single: Any) -> None:
    """Regression ensembles: validation and test MSE in the targets' units, and the test MSE cut."""
    from rich.console import Console
    from rich.table import Table

    chosen_by = str(records[0].detail.get("chosen_by") or "val_mse").removeprefix("val_") if records else "mse"
    table = Table(title=f"ensembles (chosen on validation {chosen_by.replace('_', ' ').replace('mse', 'MSE')}; "
                        "* = best, what load_ensemble(name='best') returns)")
    for column in ("name", "size", "val MSE", "test MSE", "test MSE cut"):
        table.add_column(column)
    objective = objective_column(records)
    if objective:
        table.add_column(objective)
    base = single.test_mse if single else None
    for r in records:
        cut = "-" if not base or r.test_mse is None else format(1.0 - r.test_mse / base, "+.1%")
        cells = [("* " if r.chosen else "  ") + r.name, str(r.size), format(r.val_mse, ".6g"),
                 "-" if r.test_mse is None else format(r.test_mse, ".6g"), cut]
        table.add_row(*cells, *([objective_cell(r)] if objective else []))
    Console(width=160 if not sys.stdout.isatty() else None).print(table)
    if records and records[0].detail.get("choice_note"):
        typer.echo(f"ensembles: {records[0].detail['choice_note']}")

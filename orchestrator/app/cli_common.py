"""What every ``caviar`` command shares: the Typer app the command modules register on, argument
types, the one-line failure, and how a run's end is printed. Every error caviar knows about is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from orchestrator.decide.pruning import PRUNERS
from orchestrator.search.sampler import SAMPLERS
from orchestrator.search.stage_policy import STAGE_POLICIES

PRUNER_NAMES = ", ".join(sorted(PRUNERS))  # the registries name what --pruner, --sampler and --stage-policy take
SAMPLER_NAMES = ", ".join(sorted(SAMPLERS))
STAGE_POLICY_NAMES = ", ".join(STAGE_POLICIES)  # the default first
# Options `caviar run` and `caviar submit` share: one declaration, one help text
StagePolicyOption = Annotated[str | None, typer.Option(help=f"How a stage leads to the next: {STAGE_POLICY_NAMES}.")]
FuseOption = Annotated[str | None, typer.Option(help="Train same-shape trials as one batched model: auto, on or off.")]
ArraySizeOption = Annotated[str | None, typer.Option(help="Trials per fused array: auto (probe) or an integer.")]


def array_size_setting(text: str | None) -> int | str | None:
    """``--array-size 4`` as the setting holds it (an int); ``auto`` and anything else as typed, for its check."""
    return int(text) if text and text.isdigit() else text


EXECUTOR_HELP = ("Where trials run: auto (default: processes unless a setting needs Ray), ray (actors; a private "
                 "Ray without --address) or processes (children of this process: no Ray, this machine's CPUs).")

# The order `caviar --help` lists the verbs in: a sweep's life, then the cluster's.
VERBS = ("run", "status", "top", "next", "ls", "report", "ensemble", "resume", "check", "submit", "jobs", "logs",
         "stop")


class VerbOrder(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: VERBS.index(n) if n in VERBS else len(VERBS))


app = typer.Typer(
    cls=VerbOrder,
    add_completion=False,
    no_args_is_help=True,
    help="caviar: hyperparameter sweeps of PyTorch models on Ray. Sample, prune, narrow, ensemble.",
)

TaskArg = Annotated[str, typer.Argument(help="Task file (examples/digits_mlp.py) or module:attr.")]
SweepArg = Annotated[str, typer.Argument(help="Sweep directory (STORAGE/NAME), local path or URI.")]


def fail(message: str) -> None:
    from orchestrator.store.storage import redact_uri

    typer.echo(redact_uri(f"caviar: error: {message}"), err=True)  # a URI the user typed may hold a secret
    raise typer.Exit(2)


def has_sweep_row(path: str) -> bool:
    """Whether the sweep at ``path`` wrote its sweep row (what caviar resume starts from); True when unreadable."""
    from orchestrator.store import schema
    from orchestrator.store.storage import Storage

    try:
        return Storage.from_uri(path).exists(schema.SWEEP_PATH)
    except Exception:  # a URI shown redacted: say resume, as before
        return True


@contextmanager
def exit_on_interrupt(task_ref: str | None = None, what: str = "sweep") -> Iterator[None]:
    """Ctrl-C or SIGTERM during a sweep: one line saying how to go on, exit 130 (orchestrator/decide/interrupt.py).

    Before the sweep's own handlers are in place (loading the task, its data, the checks) Ctrl-C is a plain
    KeyboardInterrupt, which typer would end with exit 130 and no word: said here too."""
    from orchestrator.decide.interrupt import EXIT_CODE, print_ensembles_hint, print_hint, times_entered
    from orchestrator.errors import SweepInterrupted

    entered = times_entered()
    try:
        yield
    except SweepInterrupted as stop:
        if stop.path and stop.during == "ensembles":
            print_ensembles_hint(stop.path, task_ref)
        elif stop.path and not has_sweep_row(stop.path):  # stopped while writing its task copy: resume would refuse
            from orchestrator.store.sweeps import rerun_command

            typer.echo("interrupted before the sweep's first write: nothing to resume; start it again with "
                       f"{rerun_command(stop.path)}", err=True)
        elif stop.path:
            print_hint(stop.path, task_ref)
        else:
            typer.echo("interrupted before the sweep began: nothing was written", err=True)
        raise typer.Exit(EXIT_CODE) from None
    except KeyboardInterrupt:
        began = times_entered() != entered  # a moment between two of the sweep's steps: where it stands is unknown
        typer.echo(f"interrupted; 'caviar status' on the {what} says where it stands" if began else
                   f"interrupted before the {what} began (loading the task or its data, or checking them): "
                   "no trial ran", err=True)
        raise typer.Exit(EXIT_CODE) from None


@contextmanager
def said_if_interrupted(path: str) -> Iterator[None]:
    """Ctrl-C while the answer prints or the report draws: the sweep itself is whole, so say that and how to draw it."""
    from orchestrator.decide.interrupt import EXIT_CODE
    from orchestrator.store.storage import redact_uri

    try:
        yield
    except KeyboardInterrupt:
        shown = redact_uri(as_typed(path))
        typer.echo(f"interrupted after the sweep ended: its tables are complete in {shown} (caviar report "
                   f"{shlex.quote(shown)} draws its report)", err=True)
        raise typer.Exit(EXIT_CODE) from None


def print_result(result: Any, *, report: bool = True, task_ref: str | None = None, helper: Any = None) -> None:
    """The answer: top trials, edge warnings, the chosen ensemble against the best single model, how to load
    it, where the tables and the report are; exit 2 if it stopped early. The one place a run's end is printed.

    ``helper``: a :class:`~orchestrator.app.report_helper.ReportHelper`, asked first so that it draws while
    this prints."""
    with said_if_interrupted(result.path):
        _print_result(result, report=report, task_ref=task_ref, helper=helper)


def _print_result(result: Any, *, report: bool, task_ref: str | None, helper: Any) -> None:
    from orchestrator.app.answer import edge_lines, ensemble_lines
    from orchestrator.app.tables import open_sweep, read_trials
    from orchestrator.spec.settings import ray_joined
    from orchestrator.store import schema
    from orchestrator.store.storage import redact_uri

    drawing = report and not result.aborted and helper is not None and helper.ask(result.path)
    storage = open_sweep(result.path)  # the tables these lines need, not every trial's metrics and checkpoints
    trials, events = read_trials(storage, result.path), schema.read_events(storage)
    shown = as_typed(result.path)
    print_top(result.path, trials, 5, events)
    for line in edge_lines(events.to_pylist()):
        typer.echo(line)
    sweep_row = storage.read_table(schema.SWEEP_PATH).to_pylist()[0]
    extend_edges = json.loads(sweep_row["settings"]).get("extend_edges", True)
    for warning in result.warnings:
        advice = edge_advice(warning, redact_uri(shown), extend_edges)
        typer.secho(f"warning: {warning}" + (f": {advice}" if advice else ""), fg="yellow", err=True)
    print_failures(trials.to_pylist(), sweep_row)
    if result.aborted:
        fail(f"sweep stopped early: {result.aborted}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
    typer.echo(f"\n{counts}. Results (Parquet): {redact_uri(shown)}")
    for line in ensemble_lines(shown, task_ref):
        typer.echo(line)
    if report:
        if drawing and ray_joined():  # the run is over: Ray's shutdown overlaps the helper's drawing
            from cluster.runner import leave_ray

            leave_ray()
        written = write_sweep_report(shown, None, helper if drawing else None)  # drawn here, it reads them
        if written:
            typer.echo(f"Report: {written}")


def as_typed(path: str) -> str:
    """A local sweep folder below the working directory as a relative path (``caviar-runs/digits``, as the user
    typed it); anything else as it is."""
    if "://" in path or not os.path.isabs(path):
        return path
    try:
        relative = os.path.relpath(path)
    except OSError:  # the working directory was removed during the run: the absolute path still names the sweep
        return path
    return path if relative.startswith("..") else relative


def task_file_ref(task: str | None) -> str | None:
    """The task as a load line should name it: a file as an absolute path, a module as given."""
    if not task:
        return None
    target, sep, attr = task.partition(":")
    if not target.endswith(".py"):
        return task
    try:
        path = target if os.path.isabs(target) else os.path.abspath(target)
    except OSError:  # a job's working directory can be gone by the end of its run
        return task
    if "runtime_resources" in path.split(os.sep):  # a Ray job's copy, gone with the job: the sweep's own copy then
        return None
    return path + sep + attr


STORAGE_HELP = "Storage folder the sweep name is relative to (caviar ls STORAGE lists them)."
StorageOption = Annotated[str | None, typer.Option(help=STORAGE_HELP)]


def print_failures(trials: list[dict[str, Any]], sweep_row: dict[str, Any] | None = None) -> None:
    """The most common errors of failed trials, with counts and trial ids (orchestrator/app/failures.py); with the
    sweep row, a group whose trials drew values past the declared ranges says so."""
    import json

    from orchestrator.app.failures import error_summary

    try:
        declared = json.loads((sweep_row or {}).get("space") or "{}")
    except ValueError:
        declared = {}
    for line in error_summary(trials, declared=declared if isinstance(declared, dict) else None):
        typer.secho(line, fg="red")


def print_top(path: str, trials: Any, k: int, events: Any = None) -> None:
    """The ``k`` best of ``trials`` (the sweep's trials table) as a table; ``events``, read here if not given, only
    when none has a score. The trials table is all it reads: a sweep's metrics and checkpoints (a file per trial)
    took 1.6 s of `caviar top`'s 2.4 s at 1,240 trials, and said nothing here."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.app.answer import format_config, shown_number, shown_score, sweep_objective
    from orchestrator.app.tables import top_trials
    from orchestrator.store import schema
    from orchestrator.store.storage import Storage

    best = top_trials(trials, k).to_pylist()
    if not best:  # an empty table would say nothing of why: say where the trials are
        from collections import Counter

        counts = Counter(trials.column("status").to_pylist())
        events = schema.read_events(Storage.from_uri(path)) if events is None else events
        aborted = "sweep_aborted" in events.column("kind").to_pylist()
        waiting = not aborted and any(status in counts for status in ("pending", "running"))
        shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no trials"
        typer.echo(f"no trial has a score{' yet' if waiting else ''}: {shown}")
        return
    objective = sweep_objective(Storage.from_uri(path))
    table = Table(title=f"top {len(best)} trials")
    score_column = f"best {shown_score(0.0, objective)[0]}"  # the objective, in its own units
    # best_val_loss is the trial's lowest, from whichever epoch: not always the best score's epoch
    for column in ("trial", "stage", "status", "epochs", score_column, "lowest val loss", "config"):
        table.add_column(column)
    for t in best:
        config = format_config(t["config"])  # active parameters only: no momentum=None
        table.add_row(
            str(t["trial_id"]),
            str(t["stage"]),
            t["status"],
            str(t["epochs_run"]),
            shown_number(shown_score(t["best_score"], objective)[1]),
            shown_number(t["best_val_loss"]),
            config,
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def write_sweep_report(sweep_uri: str, tables: Any = None, helper: Any = None) -> str | None:
    """The report written into the sweep folder at the end of a run; where it is (None, with a warning, if not).

    ``helper``: one already asked for this report; if it died before answering, the report is drawn here.
    A report that cannot be drawn costs only the report: the sweep's tables are already complete.
    """
    from orchestrator.app.report_helper import FAILED, report_location, write_report_of

    answer = helper.answer() if helper is not None else None
    if answer is None:
        try:
            return write_report_of(sweep_uri, tables)
        except Exception as exc:  # matplotlib missing, a plot that fails on odd data, a read-only store...
            answer = (FAILED, f"{type(exc).__name__}: {exc}")
    status, why = answer
    if status == FAILED:
        typer.secho(f"warning: report not written: {why}", fg="yellow", err=True)
        return None
    return report_location(sweep_uri)  # as the fallback would name it: relative stays relative


def edge_advice(warning: str, sweep: str | None = None, extend_edges: bool = True) -> str:
    """What to do about a best value on an edge; a hard ``limits=`` edge cannot be looked past ("" for others).
    ``sweep``: the sweep's path, for the command that writes the next sweep's ranges. ``extend_edges``: the sweep's
    setting, which caviar next keeps: with it off, its ranges stay inside these edges."""
    if " sits at the " not in warning:
        return ""
    if warning.endswith("(a hard limit)"):
        return "the optimum may lie past the limit: widen limits= if values beyond it are valid"
    if not extend_edges:
        return ("the next sweep should look beyond it (with extend_edges = false, caviar next keeps its ranges inside "
                "this edge: widen the range in the task or a --config [space])")
    how = f" (caviar next {shlex.quote(sweep)} -o next.toml writes ranges that do)" if sweep else ""
    return f"the next sweep should look beyond it{how}"


def find_sweep(sweep: str, storage: str | None) -> str:
    """The sweep a verb names (``resolve_sweep``); a plain name is also looked for where ``caviar run`` writes
    without ``--storage``: ``caviar run task.py --name x``, then ``caviar status x``."""
    from orchestrator.spec.settings import RunSettings
    from orchestrator.store.sweeps import resolve_sweep

    return resolve_sweep(sweep, storage, RunSettings.storage)

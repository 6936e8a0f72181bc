"""The Python API: ``run_sweep`` to run one, ``load`` to read one back from Parquet."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from orchestrator import interrupt, schema
from orchestrator.controller import Controller, ControllerOptions
from orchestrator.errors import CaviarError, ConfigError, StorageError
from orchestrator.lease import LEASE_PATH, Lease
from orchestrator.prefetch import DataPrefetch, chain_ticks
from orchestrator.pruning import make_pruner
from orchestrator.settings import RunSettings, read_toml
from orchestrator.space import SearchSpace
from orchestrator.stages import Stage, default_plan, parse_plan, stage_grace_epochs
from orchestrator.storage import Storage, check_name, redact_uri
from orchestrator.sweeplog import SweepLog
from orchestrator.task import Task, load_task
from orchestrator.task_source import portable_ref, store_task_source

__version__ = "0.1.0"


@dataclass
class SweepResult:
    name: str
    path: str  # the sweep directory (local path or URI)
    best_trial_id: int | None
    best_score: float | None
    best_config: dict[str, Any] | None
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    aborted: str | None = None
    ensemble: Any = None  # the ensemble chosen on validation (ensemble_run.EnsembleRecord); None if not built
    note: str | None = None  # e.g. a resume that found the sweep finished and changed nothing

    def tables(self) -> SweepTables:
        return load(self.path)


def build_settings(
    task: Task, config_file: str | None, overrides: Mapping[str, Any]
) -> tuple[RunSettings, SearchSpace]:
    """Task defaults, then the TOML file, then explicit overrides; the space with TOML ranges applied."""
    settings = RunSettings().merged(task.settings)
    space = task.space
    if config_file:
        run_part, space_part = read_toml(config_file)
        settings = settings.merged(run_part)
        space = space.with_overrides(space_part)
    return settings.merged(overrides).validate(), space


def plan_for(settings: RunSettings) -> list[Stage]:
    plan = (
        parse_plan(settings.plan) if settings.plan else default_plan(settings.trials, settings.epochs, settings.stages)
    )
    if settings.seed_copies:  # the best config again, from new seeds, as long as the last stage trained
        plan.append(Stage(settings.seed_copies, plan[-1].epochs, reseed=True))
    return plan


def controller_for(space: SearchSpace, settings: RunSettings) -> Controller:
    plan = plan_for(settings)
    graces = stage_grace_epochs(plan, settings.grace_epochs)  # later stages never prune before the earlier one's epochs

    def pruner_for(stage: Stage) -> Any:
        options: dict[str, Any] = {"max_epochs": stage.epochs, "max_loss_ratio": settings.max_loss_ratio}
        if stage.epochs == 1 or settings.pruner == "none" or stage.reseed:  # seed copies are all kept
            return make_pruner("none", **options)
        # the controller hands over the plan's own Stage objects
        fallback = min(settings.grace_epochs, stage.epochs)
        grace = next((g for s, g in zip(plan, graces, strict=True) if s is stage), fallback)
        if settings.pruner == "asha":
            options.update(grace_epochs=grace, reduction_factor=settings.reduction_factor)
        elif settings.pruner == "median":
            options.update(grace_epochs=grace)
        return make_pruner(settings.pruner, **options)

    options = ControllerOptions(
        seed=settings.seed,
        sampler=settings.sampler,
        top_fraction=settings.top_fraction,
        max_retries=settings.max_retries,
        fail_fast=settings.fail_fast,
        promote_fraction=settings.promote_fraction,
        extend_edges=settings.extend_edges,
    )
    return Controller(space, plan, pruner_for, options)


def default_name(task: Task) -> str:
    return f"{task.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_storage(settings: RunSettings, task: Task) -> tuple[Storage, Storage, str]:
    """The sweep's directory, checked (name, writable, not taken) but not yet written."""
    name = check_name("sweep", settings.name if settings.name is not None else default_name(task))
    root = Storage.from_uri(settings.storage)
    root.check_writable()
    sweep = root.child(name)
    if not settings.overwrite and (sweep.exists(schema.SWEEP_PATH) or sweep.exists(LEASE_PATH)):
        raise StorageError(
            f"sweep {redact_uri(sweep.uri)!r} already exists (pass --overwrite to replace it, or another --name)"
        )
    return root, sweep, name


def claim_sweep(sweep: Storage, overwrite: bool) -> Lease:
    """Take the sweep's folder for this run alone (exclusive create); on --overwrite clear it first."""
    if overwrite and (sweep.exists(schema.SWEEP_PATH) or sweep.exists(LEASE_PATH)):
        Lease.take_over(sweep)  # refuses while another master still writes it
        for table in (
            "sweep",
            "stages",
            "trials",
            "metrics",
            "checkpoints",
            "weights",
            "events",
            "predictions",
            "ensembles",
            "diagnostics",
            "task",
        ):
            sweep.delete_dir(table)
        sweep.delete(LEASE_PATH)
        sweep.delete("report.html")  # the old sweep's report would describe tables that are gone
    return Lease.create(sweep)


def forget_refused_sweep(sweep: Storage, controller: Controller) -> None:
    """A start refused before any trial ran leaves nothing behind: the same name works again."""
    if all(t.status == "pending" and t.attempt == 0 for t in controller.trials.values()) or not sweep.list_files(
        "metrics"
    ):
        sweep.delete_dir("")


def run_sweep(
    task: str | Task,
    *,
    config_file: str | None = None,
    on_tick: Callable[[Controller], None] | None = None,
    **overrides: Any,
) -> SweepResult:
    """Run a sweep of ``task`` (a path or ``module:attr``) with settings as keyword arguments."""
    if isinstance(task, str):
        task = load_task(task)
    settings, space = build_settings(task, config_file, overrides)
    controller = controller_for(space, settings)
    root, sweep, name = prepare_storage(settings, task)
    from worker.contract import validate_contract  # torch loads here: the task is checked before Ray starts

    validate_contract(task, [t.config for t in controller.trials.values()], settings)
    log = SweepLog(sweep, space, lease=claim_sweep(sweep, settings.overwrite))
    with interrupt.stop_on_signals():
        try:
            run_claimed(task, settings, space, root, sweep, name, controller, log, on_tick, config_file)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: a resumable sweep, said so
            raise interrupt.write_interrupted(stop, controller, log, redact_uri(sweep.uri)) from None
    return finish_sweep(task, settings, sweep, name, controller, log, prefetch=log.prefetch)


def run_claimed(task: Task, settings: RunSettings, space: SearchSpace, root: Storage, sweep: Storage, name: str,
                controller: Controller, log: SweepLog, on_tick: Callable[[Controller], None] | None,
                config_file: str | None = None) -> None:
    """The sweep row, then the trials on Ray; a refusal before any trial ran removes the folder."""
    try:
        store_task_source(sweep, task, config_file)  # the sweep carries its task (orchestrator/task_source.py)
        log.write_sweep_row(
            {
                "name": name,
                "task": portable_ref(task.ref),  # never a machine's (or a job's temporary) path
                "seed": settings.seed,
                # credentials in a storage URI (secret_key=...) never land in caviar's own files
                "settings": schema.json_dumps({**asdict(settings), "storage": redact_uri(settings.storage)}),
                "space": schema.json_dumps(space.to_dict(), sort_keys=False),  # order fixes sampling
                "caviar_version": __version__,
                "created": schema.now_ms(),
            }
        )
        from cluster.runner import execute  # Ray loads here, never at import time

        # The soup at the end needs the data here: load it while the trials train, not after them.
        prefetch = log.prefetch = DataPrefetch(task) if settings.ensemble else None
        ticks = chain_ticks(prefetch and prefetch.on_tick, on_tick, interrupt.keep_handlers)
        execute(task, settings, root, name, controller, log, on_tick=ticks)
    except CaviarError:
        forget_refused_sweep(sweep, controller)
        raise


def finish_sweep(
    task: Task,
    settings: RunSettings,
    sweep: Storage,
    name: str,
    controller: Controller,
    log: SweepLog,
    prefetch: DataPrefetch | None = None,
) -> SweepResult:
    """After the trials: edge warnings, the last writes, ensembles; the result (shared by run and resume)."""
    warnings = controller.final_edge_warnings()
    log.flush(controller, force=True)
    log.compact_events()
    ensemble = None
    if settings.ensemble:  # from stored predictions; a failure is a logged warning, never a lost sweep
        from orchestrator.ensemble_run import after_sweep

        ensemble = after_sweep(sweep, task, device=settings.device, load_data=prefetch and prefetch.result)
    if log.lease is not None:
        log.lease.release()  # the sweep is whole: a later resume may take it at once
    return result_of(controller, name, sweep.uri, warnings, ensemble=ensemble)


def result_of(controller: Controller, name: str, uri: str, warnings: list[str], **extra: Any) -> SweepResult:
    """The sweep's result from its controller: best trial, counts by status, and what ``extra`` adds."""
    best = controller.best()
    counts: dict[str, int] = {}
    for trial in controller.trials.values():
        counts[trial.status] = counts.get(trial.status, 0) + 1
    return SweepResult(
        name,
        uri,
        best.trial_id if best else None,
        best.best_score if best and math.isfinite(best.best_score) else None,
        dict(best.config) if best else None,
        counts,
        warnings,
        controller.abort_reason,
        **extra,
    )


def resume_sweep(path: str, *, on_tick: Callable[[Controller], None] | None = None, task: str | Task | None = None,
                 trust_task_code: bool = False, **overrides: Any) -> SweepResult:
    """Continue an interrupted sweep from its Parquet tables (see :mod:`orchestrator.resume`).

    Its task code runs again: pass ``task`` (your task file) or ``trust_task_code=True`` (the copy in the sweep).
    """
    from orchestrator.resume import resume_sweep as resume

    return resume(path, on_tick=on_tick, task=task, trust_task_code=trust_task_code, **overrides)


TABLE_NAMES = ("sweep", "trials", "metrics", "checkpoints", "events", "stages")


@dataclass
class SweepTables:
    """A finished (or running) sweep's tables, as pyarrow Tables."""

    path: str
    sweep: pa.Table
    trials: pa.Table
    metrics: pa.Table  # effective rows: one per (trial, epoch), latest attempt
    checkpoints: pa.Table
    events: pa.Table
    stages: pa.Table

    def to_pandas(self, table: str) -> Any:
        """``table`` ("trials", "metrics", ...) as a pandas DataFrame (pandas is a dependency of caviar)."""
        if table not in TABLE_NAMES:
            raise ConfigError(f"table {table!r}: unknown (one of {', '.join(TABLE_NAMES)})")
        try:
            import pandas  # noqa: F401
        except ImportError:  # an install that left it out: say so in one line, with the way round it
            raise ConfigError(f"to_pandas({table!r}) needs pandas: pip install pandas "
                              f"(or use the pyarrow table: tables.{table})") from None
        return getattr(self, table).to_pandas()

    def top(self, k: int = 10) -> pa.Table:
        """The ``k`` trials with the best score: the latest stage first (it trained longest)."""
        finished = self.trials.filter(pa.compute.is_valid(self.trials["best_score"]))
        ordered = finished.sort_by([("stage", "descending"), ("best_score", "descending")])
        return ordered.slice(0, k)


def open_sweep(path: str) -> Storage:
    storage = Storage.from_uri(path)
    if not storage.exists(schema.SWEEP_PATH):
        raise StorageError(f"{path!r} is not a caviar sweep directory (no {schema.SWEEP_PATH})")
    return storage


def load(path: str) -> SweepTables:
    """Read a sweep directory (local or URI) back; no Ray, no torch."""
    from orchestrator.resume import read_events  # each event once, even after a compaction cut short

    storage = open_sweep(path)
    metrics = schema.read_dir(storage, "metrics", schema.METRICS)
    assert metrics is not None
    if not storage.exists(schema.TRIALS_PATH):  # one line naming it, never an empty table to trip over
        raise StorageError(f"{storage.path(schema.TRIALS_PATH)}: no such file (the sweep has not written its "
                           "trials table yet, or it was deleted)")
    trials = storage.read_table(schema.TRIALS_PATH)
    return SweepTables(
        path=path,
        sweep=storage.read_table(schema.SWEEP_PATH),
        trials=trials,
        metrics=schema.effective_metrics(metrics),
        checkpoints=schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS),
        events=read_events(storage),
        stages=schema.read_dir(storage, "stages", schema.STAGES),
    )


def parse_resources(items: list[str]) -> dict[str, float]:
    """``["accelerator_type_a100=1", ...]`` to a dict, naming a bad item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"setting 'resources': expected NAME=AMOUNT, got {item!r}")
    return out

"""The Python API: ``run_sweep`` to run one, ``load`` to read one back from Parquet."""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, Unpack

from orchestrator.app import resume
from orchestrator.app.lifecycle import (  # noqa: F401 (names the API has always had)
    PlugIns,
    SweepResult,
    build_settings,
    choose_plugins,
    controller_for,
    drive_and_finish,
    finish_sweep,
    forget_refused_sweep,
    plan_for,
    result_of,
)
from orchestrator.app.tables import SweepTables, load, open_sweep  # noqa: F401 (the API's names)
from orchestrator.decide.controller import Controller
from orchestrator.decide.pruning import PrunerChoice
from orchestrator.decide.sweeplog import SweepLog
from orchestrator.errors import ConfigError, StorageError
from orchestrator.search.sampler import SamplerChoice
from orchestrator.search.space import SearchSpace
from orchestrator.search.stage_policy import StagePolicyChoice
from orchestrator.spec.options import ResumeOptions, RunOptions
from orchestrator.spec.settings import RunSettings
from orchestrator.spec.task import Task, load_task, task_ref_of
from orchestrator.spec.task_source import portable_ref, store_task_source
from orchestrator.store import schema
from orchestrator.store.lease import LEASE_PATH, Lease
from orchestrator.store.storage import Storage, check_name, redact_uri

__version__ = "0.1.0"


def default_name(task: Task) -> str:
    return f"{task.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_storage(settings: RunSettings, task: Task) -> tuple[Storage, Storage, str]:
    """The sweep's directory, checked (name, writable, not taken) but not yet written."""
    name = check_name("sweep", settings.name if settings.name is not None else default_name(task))
    root = Storage.from_uri(settings.storage)
    root.check_writable()
    sweep = root.child(name)
    refuse_a_taken_name(sweep, settings.overwrite)
    return root, sweep, name


def is_taken(sweep: Storage) -> bool:
    return sweep.exists(schema.SWEEP_PATH) or sweep.exists(LEASE_PATH)


def refuse_a_taken_name(sweep: Storage, overwrite: bool) -> None:
    """A new sweep never lands on an earlier one (or one being written) unless ``overwrite`` says so."""
    if not overwrite and is_taken(sweep):
        raise StorageError(
            f"sweep {redact_uri(sweep.uri)!r} already exists (pass --overwrite to replace it, or another --name; "
            f"from Python: overwrite=True or name=...){unfinished_note(sweep)}"
        )


def unfinished_note(sweep: Storage) -> str:
    """What a taken name holds when its sweep did not end: a rerun of the command of a sweep whose master was killed
    (a reboot, a lost session) is told it can go on, not only that --overwrite would throw its trials away."""
    from orchestrator.app.tables import resume_command
    from orchestrator.store.sweeps import describe_sweep, unfinished_state

    try:
        if not sweep.exists(schema.SWEEP_PATH) or describe_sweep(sweep)["state"] != "unfinished":
            return ""
    except StorageError:  # damaged tables: caviar status names them
        return ""
    state = unfinished_state(sweep)
    if not state.startswith("stopped"):
        return f"; it is {state}" if state.startswith("running") else ""
    return f"; it stopped before its end, and {resume_command(sweep, sweep.uri)} continues it"


def claim_sweep(sweep: Storage, overwrite: bool) -> Lease:
    """Take the sweep's folder for this run alone (exclusive create); on --overwrite clear it first."""
    if overwrite and (sweep.exists(schema.SWEEP_PATH) or sweep.exists(LEASE_PATH)):
        Lease.take_over(sweep, then="--overwrite then replaces it")  # refuses while another master still writes it
        for table in (
            "sweep",
            "stages",
            "trials",
            "metrics",
            "checkpoints",
            "weights",
            "events",
            "predictions",
            "dataset",  # the old sweep's objective and targets: kept, they named the new sweep's scores
            "ensembles",
            "diagnostics",
            "task",
        ):
            sweep.delete_dir(table)
        sweep.delete(LEASE_PATH)
        sweep.delete("report.html")  # the old sweep's report would describe tables that are gone
    return Lease.create(sweep)


def run_sweep(
    task: str | os.PathLike[str] | types.ModuleType | Task,
    *,
    config_file: str | os.PathLike[str] | None = None,
    on_tick: Callable[[Controller], None] | None = None,
    **overrides: Unpack[RunOptions],
) -> SweepResult:
    """Run a sweep of ``task`` (a path, ``module:attr``, an imported task module or a loaded Task); return its result.

    Settings come from the task's ``settings``, then ``config_file`` (TOML ``[run]`` and ``[space]``),
    then these keyword arguments (:class:`orchestrator.spec.options.RunOptions` documents each one).
    ``on_tick`` is called with the controller after every step (the CLI's live view uses it).
    """
    check_on_tick(on_tick)
    task = task if isinstance(task, Task) else load_task(task_ref_of(task))
    config_file = config_file_path(config_file)
    settings, space = build_settings(task, config_file, overrides)
    controller = controller_for(space, settings, choose_plugins(task.settings, overrides))
    if settings.fuse == "off" and settings.array_size != "auto":  # said, not refused: a task may set it for --fuse on
        logging.getLogger("caviar").warning(
            "setting 'array_size' (%s) does nothing while fuse is off: set fuse to on or auto to train same-shape "
            "trials as fused arrays", settings.array_size)
    root, sweep, name = prepare_storage(settings, task)
    from worker.check.contract import validate_contract  # torch loads here: the task is checked before Ray starts

    value_failures: list[dict[str, Any]] = []
    splits = validate_contract(task, [t.config for t in controller.trials.values()], settings, space, value_failures)
    for note in value_failures:  # in the events table, so the report lists them too
        controller.event("value_fails", reason=note["message"], detail=note)
    from worker.data.kinds import objective_and_mode

    controller.objective = objective_and_mode(task, splits.target_kind)  # what the printed scores stand for
    if not space.searched and settings.trials > 1:
        logging.getLogger("caviar").warning(
            "space: every value is fixed, so the %d trials train one config and differ only in their seeds (pruning "
            "and ensembles then choose among seeds); give ranges (loguniform, choice, ...) to search", settings.trials)
    log = SweepLog(sweep, space, lease=claim_sweep(sweep, settings.overwrite))

    def first_writes() -> None:
        from worker.train.session import write_input_statistics

        store_task_source(sweep, task, config_file)  # the sweep carries its task (orchestrator/spec/task_source.py)
        write_input_statistics(sweep, splits)  # what a resume's workers standardise with
        log.write_sweep_row({**sweep_row(task, settings, space, name, controller.objective),
                             "feature_names": list(splits.feature_names) if splits.feature_names else None})

    return drive_and_finish(task, settings, root, sweep, name, controller, log, resumed=False,
                            first_writes=first_writes, on_tick=on_tick, splits=splits)


def check_on_tick(on_tick: object) -> None:
    """Refused before anything runs: called first after the sweep's folder is claimed, it failed there."""
    if on_tick is not None and not callable(on_tick):
        raise ConfigError(f"on_tick: expected a function of the controller, called after every step, got "
                          f"{type(on_tick).__name__}")


def config_file_path(config_file: object) -> str | None:
    if config_file is None or isinstance(config_file, str):
        return config_file
    if isinstance(config_file, os.PathLike):
        return os.fspath(config_file)  # type: ignore[return-value]
    # open() takes an int as a file descriptor: config_file=3 read, then closed, whatever this process had open there
    raise ConfigError(f"config_file: expected a TOML file's path, got {type(config_file).__name__}")


def sweep_row(task: Task, settings: RunSettings, space: SearchSpace, name: str,
              objective: tuple[str, str] | None = None) -> dict[str, Any]:
    """What the sweep row records: the task, the settings (plug-ins by name), the initial space and the objective."""
    return {
        "name": name,
        "task": portable_ref(task.ref),  # never a machine's (or a job's temporary) path
        "seed": settings.seed,
        # credentials in a storage URI (secret_key=...) never land in caviar's own files
        "settings": schema.json_dumps({**asdict(settings), "storage": redact_uri(settings.storage)}),
        "space": schema.json_dumps(space.to_dict(), sort_keys=False),  # order fixes sampling
        "caviar_version": __version__,
        "created": schema.now_ms(),
        "objective": objective[0] if objective else None,
        "mode": objective[1] if objective else None,
    }


def resume_sweep(path: str | os.PathLike[str], *, on_tick: Callable[[Controller], None] | None = None,
                 task: str | os.PathLike[str] | types.ModuleType | Task | None = None,
                 trust_task_code: bool = False, pruner: PrunerChoice | None = None,
                 sampler: SamplerChoice | None = None, stage_policy: StagePolicyChoice | None = None,
                 **overrides: Unpack[ResumeOptions]) -> SweepResult:
    """Continue an interrupted sweep from its Parquet tables (see :mod:`orchestrator.app.resume`).

    Its task code runs again: pass ``task`` (your task file) or ``trust_task_code=True`` (the copy in the sweep).
    A ``task`` file whose bytes differ from the sweep's stored copy is refused (``TaskError``) before anything runs.
    """
    check_on_tick(on_tick)
    if task is not None and not isinstance(task, Task):
        task = task_ref_of(task)  # a pathlib.Path or an imported module, as run_sweep takes them
    return resume.resume_sweep(path, on_tick=on_tick, task=task, trust_task_code=trust_task_code,
                               plugins=PlugIns(pruner, sampler, stage_policy), **overrides)


def release_workers() -> None:
    """End the actors a finished sweep kept warm for the next one (``keep_workers``); they hold their CPUs and GPUs
    until then, so call this before other Ray work in the same process needs them."""
    import sys

    warm_pool = sys.modules.get("cluster.warm_pool")  # never imported: no sweep ran here, nothing is kept
    if warm_pool is not None:
        warm_pool.end_all()


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

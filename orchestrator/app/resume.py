"""Resume a sweep whose master died, from its Parquet tables alone (nothing of the sweep is pickled).

The sweep row holds the settings and the initial space; the stages table each begun stage's
ranges; the trials table each trial's status; the metrics table every epoch a worker
persisted. :func:`read_record` reads them; :func:`rebuild_controller` hands the rows to
:func:`orchestrator.decide.restore.restore`, which brings a new controller to where they left
it (what happens to finished, interrupted and unrecorded trials is described there). Then the
sweep runs on through the same drive and finish as ``run_sweep`` (:func:`orchestrator.app.lifecycle.drive_and_finish`),
unfused: the fused backend's set-up reshapes a stage's trials before any has started, which no
longer holds mid-stage.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orchestrator.app.answer import sweep_objective
from orchestrator.app.lifecycle import (
    NO_PLUGINS,
    PLUGIN_KINDS,
    PlugIns,
    controller_for,
    drive_and_finish,
    result_of,
)
from orchestrator.app.lifecycle import log as caviar_log
from orchestrator.decide.controller import Controller
from orchestrator.decide.pruning import chance_classes, chance_loss
from orchestrator.decide.restore import Rebuilt, StoredRows, restore
from orchestrator.decide.status import ENDED
from orchestrator.errors import ConfigError, StorageError
from orchestrator.search.space import SearchSpace, parse_param
from orchestrator.spec.options import ResumeOptions
from orchestrator.spec.settings import RunSettings
from orchestrator.store import schema
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage, redact_uri, split_query
from orchestrator.store.sweeps import lease_unreleased, not_a_sweep, rerun_command

# What may change when a sweep resumes: where and how wide it runs, never what it searches.
RESUMABLE_SETTINGS = frozenset(ResumeOptions.__annotations__)  # how it runs, never what it searches
_WHOLE_METRICS = re.compile(r"metrics/trial-(\d+)\.parquet")  # a trial's whole file, not its parts (.a0.p0000)

@dataclass
class SweepRecord:
    """A sweep's tables as plain rows: everything a rebuild reads."""

    sweep: dict[str, Any]
    stages: list[dict[str, Any]]  # one row per begun stage, in order
    trials: list[dict[str, Any]]  # the trials table; timestamps as epoch milliseconds
    metrics: list[dict[str, Any]]  # effective rows: one per (trial, epoch)
    last_attempt: dict[int, int] = field(default_factory=dict)  # highest attempt with persisted rows, per trial
    events: list[dict[str, Any]] = field(default_factory=list)
    event_parts: list[str] = field(default_factory=list)
    num_classes: int | None = None
    baseline_val_loss: float | None = None  # regression's "chance" for the not-learning rule
    ends_cut_short: frozenset[int] = frozenset()  # trials killed while writing their end (ends_cut_short below)

    @property
    def settings(self) -> RunSettings:
        try:
            stored = json.loads(self.sweep["settings"])
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{schema.SWEEP_PATH}: settings are not valid JSON ({exc})") from None
        return RunSettings().merged(stored)

    @property
    def space(self) -> SearchSpace:
        return space_from_json(self.sweep["space"], schema.SWEEP_PATH)

    def rows(self) -> StoredRows:
        return StoredRows(self.stages, self.trials, self.metrics, self.last_attempt, self.events, self.num_classes,
                          self.baseline_val_loss, self.ends_cut_short)


def space_from_json(text: str, where: str) -> SearchSpace:
    try:
        data = json.loads(text)
        return SearchSpace({name: parse_param(name, spec) for name, spec in data.items()})
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{where}: the stored search space cannot be read back ({exc})") from None


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, timestamps as epoch milliseconds (what the controller keeps)."""
    columns = {}
    for name in table.column_names:
        column = table[name]
        columns[name] = column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column
    return pa.table(columns).to_pylist() if columns else []


def read_record(storage: Storage) -> SweepRecord:
    """Read what a rebuild needs; a missing or unreadable file is named."""
    if not storage.exists(schema.SWEEP_PATH):
        raise not_a_sweep(storage, storage.uri)
    sweep = storage.read_table(schema.SWEEP_PATH).to_pylist()
    if len(sweep) != 1:
        raise StorageError(f"{storage.path(schema.SWEEP_PATH)}: expected one row, found {len(sweep)}")
    stages = sorted(_rows(schema.read_dir(storage, "stages", schema.STAGES)), key=lambda r: r["stage"])
    # Tables number stages from 1; sweeps written before that numbered them from 0.
    base = schema.FIRST_STAGE if not stages or stages[0]["stage"] != 0 else 0
    stages = [{**row, "stage": row["stage"] - base, "file_stage": row["stage"]} for row in stages]
    raw = schema.read_dir(storage, "metrics", schema.METRICS)
    if storage.exists(schema.TRIALS_PATH):
        trials = [{**row, "stage": row["stage"] - base} for row in _rows(storage.read_table(schema.TRIALS_PATH))]
    elif stages:  # every flush writes the trials table before stage rows: this table was lost
        raise StorageError(f"{storage.path(schema.TRIALS_PATH)}: no such file (the sweep's trials table is "
                           "missing; nothing was written)")
    else:  # the master died in its first flush: trials start again (those with stored epochs resume)
        trials = []
    last_attempt: dict[int, int] = {}
    for tid, attempt in zip(raw["trial_id"].to_pylist(), raw["attempt"].to_pylist(), strict=True):
        last_attempt[tid] = max(attempt, last_attempt.get(tid, -1))
    event_parts = storage.list_files("events")
    events = _rows(schema.read_events(storage))
    dataset = schema.read_dataset_row(storage)  # a column a sweep from before it lacks reads as None
    return SweepRecord(
        sweep[0], stages, trials, _rows(schema.effective_metrics(raw)), last_attempt, events, event_parts,
        chance_classes(dataset.get("num_classes"), dataset.get("objective"), bool(dataset.get("own_loss"))),
        chance_loss(dataset.get("baseline_val_loss"), dataset.get("objective")), ends_cut_short(storage, trials),
    )


def ends_cut_short(storage: Storage, trials: list[dict[str, Any]]) -> frozenset[int]:
    """Trials not ended in the trials table whose worker began its end but never finished it.

    A trial's end first writes its whole metrics file (``metrics/trial-N.parquet``), then runs every kept checkpoint
    on val and test, then the predictions, and last the checkpoint index with those metrics
    (:meth:`worker.train.recorder.TrialRecorder.end_finish`). Killed in between, the trial's stored epochs say it
    is done, while the ensembles and ``load_ensemble`` would miss it: a resume must train it again.
    """
    ended = {row["trial_id"] for row in trials if row["status"] in ENDED}
    whole = {int(m[1]) for f in storage.list_files("metrics") if (m := _WHOLE_METRICS.fullmatch(f))}
    candidates = whole - ended
    if not candidates:
        return frozenset()
    written: set[int] = set()
    for tid in candidates:
        rel = schema.checkpoint_index_path(tid)
        if storage.exists(rel):
            index = storage.read_table(rel)
            if "metrics" in index.column_names and index["metrics"].null_count == 0:
                written.add(tid)
    return frozenset(candidates - written)


def rebuild_controller(
    record: SweepRecord, make_controller: Callable[[SearchSpace, RunSettings], Controller] | None = None
) -> Rebuilt:
    """The controller as it stood when the tables were last written, ready to go on. Pure: rows in, state out."""
    if make_controller is None:
        make_controller = controller_for
    settings, space = record.settings, record.space
    controller = make_controller(space, settings)
    spaces = [space_from_json(row["space"], schema.stage_path(row["file_stage"])) for row in record.stages] or [space]
    return restore(controller, record.rows(), spaces)


def resume_settings(
    record: SweepRecord, storage: Storage, overrides: Mapping[str, Any]
) -> tuple[RunSettings, str, str]:
    """The stored settings with execution overrides; the storage root URI and sweep name the sweep lives at."""
    for key in overrides:
        if key not in RESUMABLE_SETTINGS:
            raise ConfigError(
                f"setting '{key}': fixed by the sweep, it cannot change on resume "
                f"(resume accepts {', '.join(sorted(RESUMABLE_SETTINGS))})"
            )
    if "://" in storage.uri:  # s3://bucket/prefix/name?endpoint_override=...: the name sits before the query
        base, sep, query = split_query(storage.uri)
        root_base, _, name = base.rstrip("/").rpartition("/")
        root_uri = f"{root_base}{sep}{query}"
    else:  # absolute, so workers find it whatever their working directory
        root_uri, name = os.path.dirname(storage.root), os.path.basename(storage.root)
    settings = record.settings.merged(
        {**overrides, "storage": root_uri, "name": name, "overwrite": False, "fuse": "off"}
    )
    return settings.validate(), root_uri, name


def resume_sweep(path: str | os.PathLike[str], *, on_tick: Callable[[Controller], None] | None = None, task: Any = None,
                 trust_task_code: bool = False, plugins: PlugIns = NO_PLUGINS, **overrides: Any) -> Any:
    """Continue the sweep at ``path`` (a sweep directory or URI) from its tables; returns a ``SweepResult``.

    Only execution settings (slots, address, resources, device, ...) may be overridden.
    Run it only when the sweep's master is gone: two masters on one sweep overwrite each other.
    ``task`` / ``trust_task_code`` choose the code that runs (:func:`orchestrator.spec.task_source.sweep_task`).
    """
    from orchestrator.decide.sweeplog import SweepLog
    from orchestrator.spec.task_source import refuse_an_edited_task, sweep_task

    path = os.fspath(path)
    storage = Storage.from_uri(path)
    record = read_record(storage)
    refuse_other_plugins(record.settings, plugins)
    refuse_an_edited_task(storage, task)  # before any write, worker or Ray: one sweep, one version of its code
    unknown = [str(getattr(record.settings, kind)) for kind, (registry, _) in PLUGIN_KINDS.items()
               if getattr(record.settings, kind) not in registry and getattr(plugins, kind) is None]
    if unknown and (task is not None or trust_task_code or any("." not in name for name in unknown)):
        # A plug-in name the task file registers (@register_sampler("mine")) is known only once the task is loaded;
        # without --task or --trust-task-code that is the line to say, not "expected one of random, ...". (A class
        # path is an object passed to run_sweep: only passing it again helps, as its own line says.)
        task = sweep_task(storage, task, trust_task_code=trust_task_code, purpose="to resume")
    settings, root_uri, name = resume_settings(record, storage, overrides)
    objective = sweep_objective(storage)  # what the printed scores stand for, as the workers stored it

    def make_controller(space: SearchSpace, stored: RunSettings) -> Controller:
        made = controller_for(space, stored, plugins)
        made.objective = objective  # before the replay: a trial it fails for a NaN objective names the metric
        return made

    rebuilt = rebuild_controller(record, make_controller)
    controller = rebuilt.controller
    if _nothing_to_do(record, rebuilt, storage, settings):  # a finished sweep: resume writes and runs nothing
        return _as_found(controller, storage, name)
    task = sweep_task(storage, task, trust_task_code=trust_task_code, purpose="to resume")
    log = SweepLog(storage, record.space, lease=Lease.take_over(storage))
    log.continue_after(record.stages, record.events, record.event_parts)
    if (unknown_options := pruner_options_unrecorded(record, plugins, path)) is not None:
        caviar_log.warning("%s", unknown_options)

    def first_writes() -> None:
        log.flush(controller, force=True)  # the resume is on disk before any trial runs again

    return drive_and_finish(task, settings, Storage.from_uri(root_uri), storage, name, controller, log, resumed=True,
                            first_writes=first_writes, on_tick=on_tick)


def pruner_options_unrecorded(record: SweepRecord, plugins: PlugIns, path: str) -> str | None:
    """What to say when a sweep row written before ``pruner_options`` existed is resumed without its pruner object: the
    row names the pruner alone, so a run given MedianStoppingPruner(min_trials=2) resumes with its defaults
    (min_trials=5) and keeps trials it would have pruned. Said, not refused: most such runs used the defaults."""
    try:
        stored = json.loads(record.sweep["settings"] or "{}")
    except (TypeError, ValueError):
        return None  # the settings property names the broken JSON
    pruner = record.settings.pruner
    if "pruner_options" in stored or plugins.pruner is not None or pruner == "none":
        return None
    return (f"this sweep was written by a caviar that did not record its pruner's options: it resumes with "
            f"the {pruner!r} pruner's defaults. If the run was given a configured pruner object, pass the same to "
            f"resume_sweep({path!r}, task=..., pruner=...) so that it prunes as the run did")


def refuse_other_plugins(stored: RunSettings, plugins: PlugIns) -> None:
    """A plug-in passed to a resume other than the one the sweep records: the recorded one (a registered name) decided
    and the one passed was left out without a word, so the user believed the rest of the sweep ran with theirs."""
    for kind, (_, name_of) in PLUGIN_KINDS.items():
        given, recorded = getattr(plugins, kind), getattr(stored, kind)
        if given is not None and name_of(given) != recorded:
            raise ConfigError(f"{kind}: {name_of(given)!r} is not this sweep's {kind}, {recorded!r}, and a resume "
                              f"decides as the sweep began; pass the sweep's own {kind}, or none for a registered "
                              "name")


def _nothing_to_do(record: SweepRecord, rebuilt: Rebuilt, storage: Storage, settings: RunSettings) -> bool:
    controller = rebuilt.controller
    stored = {row["trial_id"]: row["status"] for row in record.trials}
    unchanged = stored == {tid: t.status for tid, t in controller.trials.items()}
    ensembles_done = not settings.ensemble or bool(controller.abort_reason) or _ensembles_current(storage, record)
    # A lease its master never released: it died before its end (caviar ls says "stopped"), even where caviar
    # ensemble has since built ensembles over its ended trials; the end (soup, report, release) is still to run.
    ended = not lease_unreleased(storage)
    return (controller.finished and unchanged and not rebuilt.resumed and not rebuilt.closed and ensembles_done
            and ended)


def _ensembles_current(storage: Storage, record: SweepRecord) -> bool:
    return ensembles_behind(storage, record.trials) is None


def ensembles_behind(storage: Storage, trials: list[dict[str, Any]]) -> str | None:
    """Why a sweep whose trials have ended lacks its ensembles' last build, or None: no table, or one built before a
    trial ended (``trials``: rows with ``finished`` in epoch milliseconds).

    One built on a stopped sweep (``caviar ensemble``) is rebuilt at the resumed sweep's end; a resume killed during
    that rebuild leaves the old table, which leaves out every trial trained since: it is not the finished sweep's.
    """
    if not storage.exists(schema.ENSEMBLES_PATH):
        return "not built"
    built = [row["created"] for row in _rows(storage.read_table(schema.ENSEMBLES_PATH).select(["created"]))
             if row["created"] is not None]
    later = sorted(row["trial_id"] for row in trials
                   if built and row.get("finished") is not None and row["finished"] > min(built))
    if later:
        return f"built before trial{'s' if len(later) > 1 else ''} {', '.join(map(str, later))} ended"
    return None


def ensembles_to_rebuild(storage: Storage) -> str | None:
    """What ``caviar status`` says of a sweep whose trials have ended and whose master is gone when its ensembles are
    missing (the master stopped while it built them) or older than a trial; None when there is nothing to build."""
    dataset = schema.read_dataset_row(storage)
    predictions = [f for f in storage.list_files("predictions") if f.startswith("predictions/trial-")]
    if not storage.exists(schema.TRIALS_PATH) or not dataset or dataset.get("kind") == "custom" or not predictions:
        return None  # no trial stored predictions, or a custom kind's outputs: no ensembles to build
    settings = json.loads(storage.read_table(schema.SWEEP_PATH).to_pylist()[0]["settings"] or "{}")
    if settings.get("prediction_dtype") == "none" or (
            not settings.get("ensemble", True) and not storage.exists(schema.ENSEMBLES_PATH)):
        return None
    return ensembles_behind(storage, _rows(storage.read_table(schema.TRIALS_PATH)))


def _as_found(controller: Controller, storage: Storage, name: str) -> Any:
    """The result of a finished sweep, read back, with a note saying resume changed nothing."""

    note = f"sweep {redact_uri(storage.uri)} has finished: nothing to resume, nothing written"
    if controller.abort_reason:  # it ended early, on purpose: resume does not start it over
        note = (f"sweep {redact_uri(storage.uri)} was stopped early, so resume does not continue it (nothing written); "
                f"once its cause below is fixed, start it again: {rerun_command(storage.uri)}")
    chosen = None
    if storage.exists(schema.ENSEMBLES_PATH):  # what the run chose, as its own result said
        from orchestrator.ensemble.ensemble_run import read_ensembles

        chosen = next((r for r in read_ensembles(storage) if r.chosen), None)
    return result_of(controller, name, storage.location, [], note=note, ensemble=chosen)

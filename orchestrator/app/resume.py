"""Resume a sweep whose master died, from its Parquet tables alone (nothing of the sweep is pickled).

The sweep row holds the settings and the initial space; the stages table each begun stage's
ranges; the trials table each trial's status; the metrics table every epoch a worker
persisted. From these the controller is rebuilt:

- stages begin again with their stored ranges (stage sampling is a pure function of seed,
  stage and count, so trial ids and configs come out the same; the stored config wins);
- finished, pruned and failed trials stay as they are;
- the current stage's pruner is fed every stored epoch in the order the workers recorded
  them, so ASHA rungs and medians hold the same scores as before the crash;
- an interrupted trial (running or pending with persisted epochs) goes back to the queue
  under a new attempt number and resumes from its last checkpoint (the worker reads its
  resume state); rows it re-runs supersede the old attempt's (``schema.effective_metrics``);
- an interrupted trial whose stored epochs already end it (max epochs, or a stop the
  replayed pruner takes at its last epoch) is closed instead;
- a stage the live run had begun but the (throttled) tables had not recorded begins again
  once the stage before it ends, and its trials' stored epochs are taken up the same way;
- a fused sweep's later stages share shapes as before (the ``fusing_on`` event), but the
  resumed run trains unfused.

:func:`read_record` reads the tables; :func:`rebuild_controller` is pure (no ray, no torch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orchestrator.app.lifecycle import NO_PLUGINS, PlugIns, controller_for, finish_sweep, result_of
from orchestrator.app.prefetch import chain_ticks
from orchestrator.decide import interrupt
from orchestrator.decide.controller import ENDED, Controller, observation_of
from orchestrator.errors import ConfigError, StorageError
from orchestrator.search.space import SearchSpace, parse_param
from orchestrator.spec.options import ResumeOptions
from orchestrator.spec.settings import RunSettings
from orchestrator.store import schema
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage, redact_uri

# What may change when a sweep resumes: where and how wide it runs, never what it searches.
RESUMABLE_SETTINGS = frozenset(ResumeOptions.__annotations__)  # how it runs, never what it searches
_PROGRESS_FIELDS = (
    "status",
    "reason",
    "attempt",
    "epochs_run",
    "best_score",
    "best_epoch",
    "best_val_loss",
    "best_val_accuracy",
    "train_seconds",
    "started",
    "finished",
    "node",
    "error",
)


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


@dataclass
class Rebuilt:
    controller: Controller
    resumed: dict[int, int]  # trial id -> the epoch its stored rows reach (it continues after its checkpoint)
    closed: list[int]  # interrupted trials whose stored epochs already ended them


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
        raise StorageError(f"{storage.uri!r} is not a caviar sweep directory (no {schema.SWEEP_PATH})")
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
    num_classes = None
    if storage.exists(schema.DATASET_PATH):
        num_classes = storage.read_table(schema.DATASET_PATH)["num_classes"][0].as_py()
    return SweepRecord(
        sweep[0], stages, trials, _rows(schema.effective_metrics(raw)), last_attempt, events, event_parts, num_classes
    )


def rebuild_controller(
    record: SweepRecord, make_controller: Callable[[SearchSpace, RunSettings], Controller] | None = None
) -> Rebuilt:
    """The controller as it stood when the tables were last written, ready to go on. Pure: rows in, state out."""
    if make_controller is None:
        make_controller = controller_for
    settings, space = record.settings, record.space
    controller = make_controller(space, settings)
    spaces = [space_from_json(row["space"], schema.stage_path(row["file_stage"])) for row in record.stages] or [space]
    _check_stages(record.stages, controller)
    _share_shapes_as_before(controller, record.events)
    controller.reopen(spaces)
    # Rows of a stage the trials table holds but whose stage row was not written yet (the master died
    # between the two writes) are taken up when the stage begins again below.
    waiting_rows = _apply_rows(controller, record.trials)
    _check_earlier_stages_ended(controller)

    controller.abort_reason = _abort_reason(record.events)
    resumed: dict[int, int] = {}
    closed: list[int] = []
    restored: set[int] = set()
    # The live run may have begun stages the tables had not caught up with (the flush is throttled):
    # when the current stage ends here, the next begins (same seed, same ranges), and its trials'
    # stored rows are taken up in turn.
    while controller.stage not in restored:
        restored.add(controller.stage)
        waiting_rows = _apply_rows(controller, waiting_rows)
        _restore_stage(controller, record, resumed, closed)
        controller.settle()
    if waiting_rows:
        raise StorageError(f"{schema.TRIALS_PATH}: trial {waiting_rows[0]['trial_id']} belongs to no stored stage "
                           "(nor to the one they lead to)")
    controller.event(
        "sweep_resumed",
        detail={"resumed": sorted(resumed), "closed": closed, "from_epochs": {str(k): v for k, v in resumed.items()}},
    )
    return Rebuilt(controller, resumed, closed)


def _apply_rows(controller: Controller, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored trial rows onto the controller's trials; returns the rows of trials it does not have yet."""
    waiting = []
    for row in rows:
        trial = controller.trials.get(row["trial_id"])
        if trial is None:
            waiting.append(row)
            continue
        if trial.stage != row["stage"]:
            raise StorageError(f"{schema.TRIALS_PATH}: trial {row['trial_id']} is in stage {row['stage'] + 1} "
                               f"but the stored plan puts it in stage {trial.stage + 1}")
        trial.config = dict(row["config"])  # the stored config wins (a fused sweep shares shapes within blocks)
        for name in _PROGRESS_FIELDS:
            setattr(trial, name, row[name])
        if trial.best_score is None:
            trial.best_score = -math.inf
    return waiting


def _check_earlier_stages_ended(controller: Controller) -> None:
    """A stage begins only when the one before has ended; tables saying otherwise cannot be finished."""
    for trial in controller.trials.values():
        if trial.stage < controller.stage and trial.status not in ENDED:
            raise StorageError(
                f"{schema.TRIALS_PATH}: trial {trial.trial_id} of stage {trial.stage + 1} is '{trial.status}' "
                f"but stage {controller.stage + 1} has begun; the tables contradict each other"
            )


def _restore_stage(controller: Controller, record: SweepRecord, resumed: dict[int, int], closed: list[int]) -> None:
    """Requeue the current stage's unfinished trials: interrupted ones first, under a new attempt; close the ended."""
    stage = controller.stage
    unfinished = sorted(tid for tid, t in controller.trials.items() if t.stage == stage and t.status not in ENDED)
    interrupted = {
        tid
        for tid in unfinished
        if controller.trials[tid].status in ("running", "interrupted")
        or tid in record.last_attempt
        or controller.trials[tid].attempt
    }
    for tid in interrupted:  # progress comes back from the persisted rows, not from the (throttled) trials table
        trial = controller.trials[tid]
        trial.epochs_run, trial.best_score, trial.best_epoch = 0, -math.inf, None
        trial.best_val_loss = trial.best_val_accuracy = None
        trial.train_seconds = 0.0
    stop_at = _replay(controller, record, interrupted)
    to_close, to_resume = [], []
    for tid in sorted(interrupted):
        trial = controller.trials[tid]
        if tid in stop_at or trial.epochs_run >= trial.max_epochs:
            trial.status = "running"  # until closed below: the stage must not look finished before that
            to_close.append(tid)
            continue
        trial.status = "pending"
        # A fresh attempt number: its metric parts and weight files never overwrite the lost attempt's.
        trial.attempt = max(trial.attempt, record.last_attempt.get(tid, -1) + 1)
        resumed[tid] = trial.epochs_run
        to_resume.append(tid)
        controller.event("trial_resumed", tid, detail={"attempt": trial.attempt, "from_epoch": trial.epochs_run})
    waiting = [tid for tid in unfinished if tid not in interrupted]
    for tid in waiting:
        controller.trials[tid].status = "pending"
    others = [tid for tid in controller.pending if controller.trials[tid].stage != stage]
    controller.pending.clear()
    controller.pending.extend(to_resume + waiting + others)
    closed.extend(to_close)
    for tid in to_close:  # the last one may end the stage and begin the next
        controller.on_stopped(tid, stop_at.get(tid, "max_epochs"))


def _check_stages(stages: list[dict[str, Any]], controller: Controller) -> None:
    for row in stages:
        index = row["stage"]
        if index >= len(controller.plan):
            raise StorageError(
                f"{schema.stage_path(schema.stage_number(index))}: stage {index + 1} is beyond the stored plan"
            )
        planned = controller.plan[index]
        if (row["trials"], row["epochs"]) != (planned.trials, planned.epochs):
            raise StorageError(
                f"{schema.stage_path(schema.stage_number(index))}: {row['trials']}x{row['epochs']} does not match the "
                f"stored plan's stage {index + 1} ({planned})"
            )
    if [row["stage"] for row in stages] != list(range(len(stages))):
        raise StorageError(f"stages: expected stages 1..{len(stages)}, found a gap")


def _replay(controller: Controller, record: SweepRecord, interrupted: set[int]) -> dict[int, str]:
    """Feed the current stage's stored epochs to its pruner in the order the workers recorded them.

    Finished trials only feed the pruner (their table rows stay); interrupted ones also rebuild
    their progress. A stop counts only at a trial's last stored epoch: stored epochs after a
    stop mean the live run decided otherwise (its reports arrived in another order), so the
    replay follows the live run. Returns the interrupted trials the replay stops.
    """
    pruner = controller.pruner
    assert pruner is not None
    stage = controller.stage
    rows = [
        r
        for r in record.metrics
        if controller.trials.get(r["trial_id"]) is not None and controller.trials[r["trial_id"]].stage == stage
    ]
    rows.sort(key=lambda r: (r["time"] or 0, r["trial_id"], r["epoch"]))
    last_epoch: dict[int, int] = {}
    for r in rows:
        last_epoch[r["trial_id"]] = max(r["epoch"], last_epoch.get(r["trial_id"], 0))
    stop_at: dict[int, str] = {}
    for r in rows:
        tid = r["trial_id"]
        row = {**r, "num_classes": record.num_classes}
        if tid in interrupted:
            reason = controller.replay(tid, row)
        else:
            reason = pruner.observe(observation_of(tid, row))
        if reason is None:
            continue
        if r["epoch"] < last_epoch[tid]:
            pruner.forget(tid)  # the live run went on past this epoch: so does the replay
        elif tid in interrupted:
            stop_at[tid] = reason
    for tid, trial in controller.trials.items():
        if trial.stage == stage and trial.status in ENDED:
            pruner.forget(tid)
    return stop_at


def _last_detail(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [e for e in events if e["kind"] == kind]
    if not found:
        return None
    try:
        return dict(json.loads(found[-1]["detail"] or "{}"))
    except (TypeError, ValueError):
        return {}


def _abort_reason(events: list[dict[str, Any]]) -> str | None:
    detail = _last_detail(events, "sweep_aborted")
    return None if detail is None else detail.get("message") or "aborted"


def _share_shapes_as_before(controller: Controller, events: list[dict[str, Any]]) -> None:
    """A fused sweep shared model shapes in blocks: its later stages must sample the same way.

    The resumed run itself trains unfused (``resume_settings``): the fused backend's set-up
    reshapes a stage's trials before any has started, which no longer holds mid-stage.
    """
    detail = _last_detail(events, "fusing_on")
    if detail and int(detail.get("array_size", 0)) > 1:
        o = controller.options
        # block_cap sized the shape blocks; array_size is only the K the probe picked
        o.fuse_array_size = int(detail.get("block_cap", detail["array_size"]))
        o.fuse_workers = int(detail.get("workers", 1))
        o.fuse_per_member = frozenset(detail.get("per_member") or o.fuse_per_member)


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
        base, sep, query = storage.uri.partition("?")
        root_base, _, name = base.rstrip("/").rpartition("/")
        root_uri = f"{root_base}{sep}{query}"
    else:  # absolute, so workers find it whatever their working directory
        root_uri, name = os.path.dirname(storage.root), os.path.basename(storage.root)
    settings = record.settings.merged(
        {**overrides, "storage": root_uri, "name": name, "overwrite": False, "fuse": "off"}
    )
    return settings.validate(), root_uri, name


def resume_sweep(path: str, *, on_tick: Callable[[Controller], None] | None = None, task: Any = None,
                 trust_task_code: bool = False, plugins: PlugIns = NO_PLUGINS, **overrides: Any) -> Any:
    """Continue the sweep at ``path`` (a sweep directory or URI) from its tables; returns a ``SweepResult``.

    Only execution settings (slots, address, resources, device, ...) may be overridden.
    Run it only when the sweep's master is gone: two masters on one sweep overwrite each other.
    ``task`` / ``trust_task_code`` choose the code that runs (:func:`orchestrator.spec.task_source.sweep_task`).
    """
    from orchestrator.decide.sweeplog import SweepLog
    from orchestrator.spec.task_source import sweep_task

    storage = Storage.from_uri(path)
    record = read_record(storage)
    settings, root_uri, name = resume_settings(record, storage, overrides)
    rebuilt = rebuild_controller(record, lambda space, stored: controller_for(space, stored, plugins))
    controller = rebuilt.controller
    if _nothing_to_do(record, rebuilt, storage, settings):  # a finished sweep: resume writes and runs nothing
        return _as_found(controller, storage, name)
    task = sweep_task(storage, task, trust_task_code=trust_task_code, purpose="to resume")
    log = SweepLog(storage, record.space, lease=Lease.take_over(storage))
    log.continue_after(record.stages, record.events, record.event_parts)
    log.flush(controller, force=True)  # the resume is on disk before any trial runs again
    if not controller.finished:
        from cluster.runner import execute  # Ray loads here, never at import time

        with interrupt.stop_on_signals():
            try:
                execute(task, settings, Storage.from_uri(root_uri), name, controller, log,
                        on_tick=chain_ticks(on_tick, interrupt.keep_handlers), resuming=True)
            except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: written, and said how to go on
                raise interrupt.write_interrupted(stop, controller, log, redact_uri(storage.uri)) from None
    return finish_sweep(task, settings, storage, name, controller, log)


def _nothing_to_do(record: SweepRecord, rebuilt: Rebuilt, storage: Storage, settings: RunSettings) -> bool:
    controller = rebuilt.controller
    stored = {row["trial_id"]: row["status"] for row in record.trials}
    unchanged = stored == {tid: t.status for tid, t in controller.trials.items()}
    ensembles_done = not settings.ensemble or bool(controller.abort_reason) or storage.exists(schema.ENSEMBLES_PATH)
    return controller.finished and unchanged and not rebuilt.resumed and not rebuilt.closed and ensembles_done


def _as_found(controller: Controller, storage: Storage, name: str) -> Any:
    """The result of a finished sweep, read back, with a note saying resume changed nothing."""

    note = f"sweep {redact_uri(storage.uri)} has finished: nothing to resume, nothing written"
    return result_of(controller, name, storage.uri, [], note=note)

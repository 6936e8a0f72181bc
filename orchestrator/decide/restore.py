"""Rebuild a controller from a sweep's stored rows: the state it had when the tables were last written.

Pure: plain rows in, controller state out (``orchestrator.app.resume`` reads the rows from
Parquet). Every change goes through the controller's own methods and its legal status moves.

- stages begin again with their stored ranges (stage sampling is a pure function of seed,
  stage and count, so trial ids and configs come out the same; the stored config wins);
- finished, pruned and failed trials stay as they are;
- the current stage's pruner is fed every stored epoch in the order the workers recorded
  them, so ASHA rungs and medians hold the same scores as before the crash;
- an interrupted trial (running, interrupted, or pending with persisted epochs) goes back to
  the queue under a new attempt number and resumes from its last checkpoint;
- an interrupted trial whose stored epochs already end it (max epochs, or a stop the replayed
  pruner takes at its last epoch) is closed instead, unless its end was cut short (no index of its
  checkpoints with their test metrics): that one trains again from its last checkpoint, to those
  epochs only, and a replayed stop stops it there again, so its checkpoints and predictions are written;
- a stage the live run had begun but the (throttled) tables had not recorded begins again once
  the stage before it ends, and its trials' stored epochs are taken up the same way;
- a fused sweep's later stages share shapes as before (the ``fusing_on`` event).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.decide.controller import Controller, observation_of
from orchestrator.decide.status import ENDED, TrialStatus
from orchestrator.errors import StorageError
from orchestrator.search.space import SearchSpace
from orchestrator.store import schema


@dataclass
class StoredRows:
    """What a rebuild reads of a sweep's tables, as plain rows (stages numbered from 0, as the controller does)."""

    stages: list[dict[str, Any]]  # one row per begun stage, in order; "file_stage" is the number on disk
    trials: list[dict[str, Any]]  # the trials table; timestamps as epoch milliseconds
    metrics: list[dict[str, Any]]  # effective rows: one per (trial, epoch)
    last_attempt: dict[int, int] = field(default_factory=dict)  # highest attempt with persisted rows, per trial
    events: list[dict[str, Any]] = field(default_factory=list)
    num_classes: int | None = None
    baseline_val_loss: float | None = None
    # Trials whose worker began writing their end but was killed before its last write (the checkpoint index with
    # each checkpoint's val/test metrics, after the predictions): stored epochs that end them are not enough to close
    # them, or the sweep would go on without their checkpoints and predictions.
    ends_cut_short: frozenset[int] = frozenset()


@dataclass
class Rebuilt:
    controller: Controller
    resumed: dict[int, int]  # trial id -> the epoch its stored rows reach (it continues after its checkpoint)
    closed: list[int]  # interrupted trials whose stored epochs already ended them


def restore(controller: Controller, rows: StoredRows, stage_spaces: Sequence[SearchSpace]) -> Rebuilt:
    """``controller`` (new, built from the sweep's settings) brought to where the stored rows left it."""
    check_stages(rows.stages, controller)
    _share_shapes_as_before(controller, rows.events)
    controller.reopen(stage_spaces)
    # Rows of a stage the trials table holds but whose stage row was not written yet (the master died
    # between the two writes) are taken up when the stage begins again below.
    waiting_rows = [row for row in rows.trials if not controller.restore_trial(row)]
    _check_earlier_stages_ended(controller)
    controller.restore_abort(_abort_reason(rows.events))
    resumed: dict[int, int] = {}
    closed: list[int] = []
    restored: set[int] = set()
    # The live run may have begun stages the tables had not caught up with (the flush is throttled):
    # when the current stage ends here, the next begins (same seed, same ranges), and its trials'
    # stored rows are taken up in turn.
    while controller.stage not in restored:
        restored.add(controller.stage)
        waiting_rows = [row for row in waiting_rows if not controller.restore_trial(row)]
        _restore_stage(controller, rows, resumed, closed)
        controller.settle()
    if waiting_rows:
        raise StorageError(f"{schema.TRIALS_PATH}: trial {waiting_rows[0]['trial_id']} belongs to no stored stage "
                           "(nor to the one they lead to)")
    controller.event(
        "sweep_resumed",
        detail={"resumed": sorted(resumed), "closed": closed, "from_epochs": {str(k): v for k, v in resumed.items()}},
    )
    return Rebuilt(controller, resumed, closed)


def _check_earlier_stages_ended(controller: Controller) -> None:
    """A stage begins only when the one before has ended; tables saying otherwise cannot be finished."""
    for trial in controller.trials.values():
        if trial.stage < controller.stage and trial.status not in ENDED:
            raise StorageError(
                f"{schema.TRIALS_PATH}: trial {trial.trial_id} of stage {trial.stage + 1} is '{trial.status}' "
                f"but stage {controller.stage + 1} has begun; the tables contradict each other"
            )


def _restore_stage(controller: Controller, rows: StoredRows, resumed: dict[int, int], closed: list[int]) -> None:
    """Requeue the current stage's unfinished trials: interrupted ones first, under a new attempt; close the ended."""
    stage = controller.stage
    unfinished = sorted(tid for tid, t in controller.trials.items() if t.stage == stage and t.status not in ENDED)
    interrupted = {
        tid
        for tid in unfinished
        if controller.trials[tid].status in (TrialStatus.RUNNING, TrialStatus.INTERRUPTED)
        or tid in rows.last_attempt
        or controller.trials[tid].attempt
    }
    for tid in interrupted:  # progress comes back from the persisted rows, not from the (throttled) trials table
        controller.forget_progress(tid)
    stop_at = _replay(controller, rows, interrupted)
    to_close, to_resume = [], []
    for tid in sorted(interrupted):
        trial = controller.trials[tid]
        attempt = max(trial.attempt, rows.last_attempt.get(tid, -1) + 1)
        if tid in stop_at and tid in rows.ends_cut_short:  # stopped, but its end unwritten: back there, then stop
            controller.resume_to_stop(tid, attempt, stop_at[tid])
            resumed[tid] = trial.epochs_run
            to_resume.append(tid)
            continue
        if tid in stop_at or (trial.epochs_run >= trial.max_epochs and tid not in rows.ends_cut_short):
            controller.hold_running(tid)  # until closed below: the stage must not look finished before that
            to_close.append(tid)
            continue
        controller.resume_trial(tid, attempt)
        resumed[tid] = trial.epochs_run
        to_resume.append(tid)
    controller.requeue(to_resume + [tid for tid in unfinished if tid not in interrupted])
    closed.extend(to_close)
    for tid in to_close:  # the last one may end the stage and begin the next
        controller.on_stopped(tid, stop_at.get(tid, "max_epochs"))


def check_stages(stages: list[dict[str, Any]], controller: Controller) -> None:
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


def _replay(controller: Controller, rows: StoredRows, interrupted: set[int]) -> dict[int, str]:
    """Feed the current stage's stored epochs to its pruner in the order the workers recorded them.

    Finished trials only feed the pruner (their table rows stay); interrupted ones also rebuild
    their progress. A stop counts only at a trial's last stored epoch: stored epochs after a
    stop mean the live run decided otherwise (its reports arrived in another order), so the
    replay follows the live run. Returns the interrupted trials the replay stops.
    """
    pruner = controller.pruner
    assert pruner is not None
    stage = controller.stage
    metrics = [
        r
        for r in rows.metrics
        if controller.trials.get(r["trial_id"]) is not None and controller.trials[r["trial_id"]].stage == stage
    ]
    metrics.sort(key=lambda r: (r["time"] or 0, r["trial_id"], r["epoch"]))
    last_epoch: dict[int, int] = {}
    for r in metrics:
        last_epoch[r["trial_id"]] = max(r["epoch"], last_epoch.get(r["trial_id"], 0))
    stop_at: dict[int, str] = {}
    for r in metrics:
        tid = r["trial_id"]
        row = {**r, "num_classes": rows.num_classes, "baseline_val_loss": rows.baseline_val_loss}
        if tid in interrupted:
            reason = controller.replay(tid, row)
        else:
            with controller.pruner_code("observe", f"at trial {tid}'s epoch {r['epoch']}, replaying the tables"):
                reason = pruner.observe(observation_of(tid, row))
        if reason is None:
            continue
        if r["epoch"] < last_epoch[tid]:
            pruner.overrule(tid)  # the live run went on past this epoch: so does the replay
        elif tid in interrupted:
            stop_at[tid] = reason
    for tid, trial in controller.trials.items():
        if trial.stage == stage and trial.status in ENDED:
            pruner.forget(tid)
    return stop_at


def last_detail(events: Sequence[Mapping[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [e for e in events if e["kind"] == kind]
    if not found:
        return None
    try:
        return dict(json.loads(found[-1]["detail"] or "{}"))
    except (TypeError, ValueError):
        return {}


def _abort_reason(events: Sequence[Mapping[str, Any]]) -> str | None:
    detail = last_detail(events, "sweep_aborted")
    return None if detail is None else detail.get("message") or "aborted"


def _share_shapes_as_before(controller: Controller, events: Sequence[Mapping[str, Any]]) -> None:
    """A fused sweep shared model shapes in blocks: its later stages must sample the same way.

    The resumed run itself trains unfused (``orchestrator.app.resume``): the fused backend's set-up
    reshapes a stage's trials before any has started, which no longer holds mid-stage.
    """
    detail = last_detail(events, "fusing_on")
    if detail and int(detail.get("array_size", 0)) > 1:
        # block_cap sized the shape blocks; array_size is only the K the probe picked
        per_member = frozenset(detail.get("per_member") or controller.options.fuse_per_member)
        controller.fuse(int(detail.get("block_cap", detail["array_size"])), int(detail.get("workers", 1)), per_member)

"""Rebuilding a sweep's controller from its Parquet tables, and retries after a lost executor: no Ray, no torch.

A "crash" here stops the master loop at some tick, leaving on disk what a real master and its
workers would have left: the trials, stages and events tables as of the last throttled flush,
and every metric row the workers persisted. The rebuilt controller then finishes the sweep on a
fresh simulated backend, and the result must equal an uninterrupted run of the same seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from orchestrator.app.api import controller_for
from orchestrator.app.resume import read_record, rebuild_controller, resume_settings
from orchestrator.decide.backend import Report
from orchestrator.decide.driver import drive
from orchestrator.decide.simulate import SimulatedBackend
from orchestrator.decide.sweeplog import SweepLog
from orchestrator.errors import ConfigError, StorageError
from orchestrator.search.space import SearchSpace, choice, loguniform, randint
from orchestrator.spec.settings import RunSettings
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from orchestrator.store.sweeps import describe_sweep

SPACE = SearchSpace({"lr": loguniform(1e-5, 1.0), "act": choice(["relu", "tanh"]), "width": randint(8, 64)})


def quality(config):
    d = math.log10(config["lr"]) + 2.5  # best near lr = 3e-3
    return 0.2 + 0.7 * math.exp(-0.5 * d * d) + (0.05 if config["act"] == "relu" else 0.0)


class Crash(Exception):
    """The master dies."""


class PersistingBackend(SimulatedBackend):
    """The simulated backend, writing every reported row as a worker would (metrics parts, recording time)."""

    def __init__(self, storage: Storage, slots: int, baseline: float | None = None):
        super().__init__(quality, slots, baseline_val_loss=baseline)
        self.storage = storage
        self.clock = 0
        self.parts: dict[tuple[int, int], int] = {}

    def poll(self, timeout: float | None = None) -> list[Report]:
        reports = super().poll(timeout)
        for report in reports:
            for row in report.rows:
                self.clock += 1
                row["time"] = self.clock
            if report.rows:
                key = (report.trial_id, report.rows[0]["attempt"])
                part = self.parts.get(key, 0)
                self.parts[key] = part + 1
                path = schema.metrics_part_path(report.trial_id, key[1], part)
                self.storage.write_table(path, schema.to_table(report.rows, schema.METRICS))
        return reports


def settings_for(**overrides) -> RunSettings:
    base = dict(plan="9x1,6x4", pruner="asha", grace_epochs=1, reduction_factor=2, seed=7, slots=1)
    return RunSettings().merged({**base, **overrides}).validate()


def start_sweep(storage: Storage, settings: RunSettings, baseline: float | None = None) -> SweepLog:
    log = SweepLog(storage, SPACE, flush_seconds=0.0)
    log.write_sweep_row(
        {
            "name": "s",
            "task": "sim",
            "seed": settings.seed,
            "settings": schema.json_dumps(asdict(settings)),
            "space": schema.json_dumps(SPACE.to_dict(), sort_keys=False),
            "created": schema.now_ms(),
        }
    )
    dataset = {"num_classes": 10, "y_val": [], "y_test": [], "input_shape": [1]}
    if baseline is not None:  # a regressor's table, as the workers write it
        dataset = {"kind": "regression", "y_val_values": [], "input_shape": [1], "baseline_val_loss": baseline}
    storage.write_table(schema.DATASET_PATH, schema.to_table([dataset], schema.DATASET))
    return log


def new_controller(settings, fuse: int):
    """As the runner builds it; ``fuse > 1``: trials share model shapes in blocks, as a fused sweep's do."""
    controller = controller_for(SPACE, settings)
    if fuse > 1:
        controller.fuse(fuse, settings.slots)
        controller.event("fusing_on", detail={"array_size": fuse, "workers": settings.slots, "per_member": ["lr"]})
    return controller


def uninterrupted(tmp_path, settings, fuse: int = 0, baseline: float | None = None):
    storage = Storage.from_uri(str(tmp_path / "whole"))
    log = start_sweep(storage, settings, baseline)
    controller = drive(new_controller(settings, fuse), PersistingBackend(storage, settings.slots, baseline), log)
    return controller, storage


def crashed(tmp_path, settings, crash_at: int, stale_ticks: int = 0, fuse: int = 0,
            baseline: float | None = None) -> Storage:
    """Run until tick ``crash_at``; the tables keep the state of ``stale_ticks`` ticks before (throttled flushes)."""
    storage = Storage.from_uri(str(tmp_path / "crashed"))
    log = start_sweep(storage, settings, baseline)
    log.flush_seconds = math.inf  # flushed by hand below, to choose how stale the tables are
    ticks = {"n": 0}

    def tick(controller):
        ticks["n"] += 1
        if ticks["n"] == crash_at - stale_ticks:
            log.flush(controller, force=True)
        if ticks["n"] == crash_at:
            raise Crash

    with pytest.raises(Crash):
        drive(new_controller(settings, fuse), PersistingBackend(storage, settings.slots, baseline), log,
              on_tick=tick)
    return storage


def resume(storage: Storage, settings: RunSettings, baseline: float | None = None):
    record = read_record(storage)
    rebuilt = rebuild_controller(record)
    log = SweepLog(storage, SPACE, flush_seconds=0.0)
    log.continue_after(record.stages, record.events, record.event_parts)
    drive(rebuilt.controller, PersistingBackend(storage, settings.slots, baseline), log)
    return rebuilt


def summary(controller):
    return [(t.trial_id, t.stage, t.status, t.reason, t.epochs_run, t.config) for t in controller.trials.values()]


@pytest.mark.parametrize(
    ("crash_at", "stale_ticks", "fuse"),
    [(4, 0, 0), (12, 0, 0), (14, 3, 0), (20, 5, 0), (11, 11, 0), (11, 9, 3)],
    ids=[
        "stage1",
        "trial-starting",
        "trial-midway-stale-table",
        "late-stale-table",
        "no-tables-yet",
        "fused-stage2-not-in-tables",
    ],
)
def test_resumed_sweep_ends_like_an_uninterrupted_one(tmp_path, crash_at, stale_ticks, fuse):
    settings = settings_for()
    whole, whole_storage = uninterrupted(tmp_path, settings, fuse)
    storage = crashed(tmp_path, settings, crash_at, stale_ticks, fuse)
    rebuilt = resume(storage, settings)
    assert summary(rebuilt.controller) == summary(whole)
    assert [s.to_dict() for s in rebuilt.controller.stage_spaces] == [s.to_dict() for s in whole.stage_spaces]
    # One effective metrics row per trial epoch, as in the uninterrupted run, and the same values.
    resumed = schema.effective_metrics(schema.read_dir(storage, "metrics")).select(["trial_id", "epoch", "score"])
    straight = schema.effective_metrics(schema.read_dir(whole_storage, "metrics")).select(
        ["trial_id", "epoch", "score"]
    )
    assert resumed.to_pylist() == straight.to_pylist()
    # The events log goes on after the stored events: unique, increasing sequence numbers.
    seqs = schema.read_dir(storage, "events", schema.EVENTS)["seq"].to_pylist()
    assert sorted(seqs) == list(range(len(seqs)))


def test_interrupted_trials_resume_under_a_new_attempt_from_their_stored_epochs(tmp_path):
    settings = settings_for()
    storage = crashed(tmp_path, settings, crash_at=14)  # trial 10 has run 2 of its 4 epochs
    record = read_record(storage)
    running = [t["trial_id"] for t in record.trials if t["status"] == "running"]
    assert running, "the crash should leave a trial mid-way"
    rebuilt = rebuild_controller(record)
    controller = rebuilt.controller
    for tid in running:
        stored = [r["epoch"] for r in record.metrics if r["trial_id"] == tid]
        trial = controller.trials[tid]
        if tid in rebuilt.resumed:
            assert trial.status == "pending" and trial.epochs_run == max(stored)
            assert trial.attempt == record.last_attempt[tid] + 1  # its rows supersede the lost attempt's
        else:
            assert tid in rebuilt.closed
    assignment = controller.next_assignment()
    assert assignment.trial_id == min(rebuilt.resumed) and assignment.resume
    kinds = [e["kind"] for e in controller.events]
    assert "sweep_resumed" in kinds and "stage_started" not in kinds  # stored stages are not begun twice


def test_a_stage_the_tables_missed_is_begun_again_and_its_stored_epochs_resumed(tmp_path):
    settings = settings_for()
    storage = crashed(tmp_path, settings, crash_at=14, stale_ticks=6)  # tables from stage 1; trial 10 at epoch 2
    record = read_record(storage)
    assert len(record.stages) == 1 and {r["trial_id"] for r in record.metrics} >= {9, 10}
    rebuilt = rebuild_controller(record)
    controller = rebuilt.controller
    assert controller.stage == 1 and rebuilt.resumed == {10: 2} and 9 in rebuilt.closed
    assert controller.trials[10].attempt == 1  # never attempt 0 again: its stored parts stay untouched
    assert controller.next_assignment().trial_id == 10


@pytest.mark.parametrize(("crash_at", "stale_ticks"), [(5, 1), (6, 2), (15, 1), (16, 2), (12, 0)])
def test_a_regression_sweep_resumes_with_its_chance_loss(tmp_path, crash_at, stale_ticks):
    # A regressor's "chance" is the val loss of predicting the training mean; the not-learning rule needs it at
    # each trial's grace epoch, live and when a resume replays an interrupted trial's stored rows.
    settings = settings_for(plan="9x3,6x6")  # stage 1 decides at epoch 1, before its trials end
    baseline = 1.9  # one-epoch losses here span 0.74-2.3: a few trials are no better than the mean
    whole, _ = uninterrupted(tmp_path, settings, baseline=baseline)
    assert any(t.reason == "not_learning" for t in whole.trials.values())
    storage = crashed(tmp_path, settings, crash_at, stale_ticks, baseline=baseline)
    record = read_record(storage)
    assert record.baseline_val_loss == baseline and record.num_classes is None
    rebuilt = resume(storage, settings, baseline)
    assert summary(rebuilt.controller) == summary(whole)


def test_stage_ranges_come_from_the_stages_table(tmp_path):
    settings = settings_for()
    storage = crashed(tmp_path, settings, crash_at=16)
    record = read_record(storage)
    assert len(record.stages) == 2
    # Widen stage 2's stored lr range by hand: the rebuild must use the stored range, not re-narrow.
    stored = json.loads(record.stages[1]["space"])
    stored["lr"]["low"] = stored["lr"]["low"] / 10
    record.stages[1]["space"] = json.dumps(stored)
    controller = rebuild_controller(record).controller
    assert controller.stage_spaces[1]["lr"].low == stored["lr"]["low"]


def test_a_finished_sweep_resumes_to_nothing_to_do(tmp_path):
    settings = settings_for(plan="4x1")
    whole, storage = uninterrupted(tmp_path, settings)
    rebuilt = rebuild_controller(read_record(storage))
    assert rebuilt.controller.finished and not rebuilt.resumed
    assert summary(rebuilt.controller) == summary(whole)


def test_tables_that_contradict_the_plan_are_named(tmp_path):
    settings = settings_for()
    storage = crashed(tmp_path, settings, crash_at=16)
    record = read_record(storage)
    record.stages[1]["trials"] = 5
    with pytest.raises(StorageError, match=r"stage-002.parquet: 5x4 does not match"):
        rebuild_controller(record)
    record = read_record(storage)
    record.trials.append({**record.trials[-1], "trial_id": 99})
    with pytest.raises(StorageError, match="trial 99 belongs to no stored stage"):
        rebuild_controller(record)


def test_resume_overrides_only_how_the_sweep_runs(tmp_path):
    settings = settings_for()
    storage = crashed(tmp_path, settings, crash_at=4)
    record = read_record(storage)
    resumed, root, name = resume_settings(record, storage, {"slots": 3})
    assert (resumed.slots, resumed.seed, name, root) == (3, 7, "crashed", str(tmp_path))
    with pytest.raises(ConfigError, match="setting 'seed': fixed by the sweep"):
        resume_settings(record, storage, {"seed": 1})


def test_not_a_sweep_directory_is_named(tmp_path):
    with pytest.raises(StorageError, match="not a caviar sweep directory"):
        read_record(Storage.from_uri(str(tmp_path)))


# -- retries after a lost executor (the controller's side of a worker SIGKILL) ------------------


def lost(tid):
    return Report(tid, lost=True, error="RayActorError: the actor died unexpectedly")


def test_a_lost_trial_is_retried_from_its_checkpoint_up_to_max_retries():
    settings = settings_for(plan="2x4", pruner="none", max_retries=2)
    controller = controller_for(SPACE, settings)
    first = controller.next_assignment()
    row = {"trial_id": 0, "attempt": 0, "epoch": 1, "stage": 0, "train_loss": 1.0, "val_loss": 1.0, "score": 0.5}
    controller.on_report(Report(0, [row]))
    controller.on_report(lost(0))
    retry = controller.next_assignment()
    assert (first.attempt, first.resume) == (0, False)
    assert (retry.trial_id, retry.attempt, retry.resume) == (0, 1, True)  # before the next new trial
    event = [e for e in controller.events if e["kind"] == "trial_retried"][0]
    assert event["detail"]["from_epoch"] == 1 and event["reason"] == "executor_lost"
    controller.on_report(lost(0))
    assert controller.next_assignment().attempt == 2
    controller.on_report(lost(0))  # the third loss is one more than max_retries
    assert controller.trials[0].status == "failed" and controller.trials[0].reason == "executor_lost"
    assert "RayActorError" in controller.trials[0].error


def test_a_crashed_sweep_is_listed_unfinished_even_with_ensembles_built_since(tmp_path):
    # caviar ensemble on a sweep whose master was killed writes the ensembles table; caviar ls then called the
    # sweep "finished" while trials were still pending, and the user took it for done instead of resuming it
    storage = crashed(tmp_path, settings_for(), crash_at=12)
    assert describe_sweep(storage)["state"] == "unfinished"
    storage.write_table(schema.ENSEMBLES_PATH, schema.ENSEMBLES.empty_table())
    assert describe_sweep(storage)["state"] == "unfinished"
    resume(storage, settings_for())
    assert describe_sweep(storage)["state"] == "finished"


def test_a_stopped_trial_whose_end_was_cut_short_trains_back_to_its_stop_and_is_stopped_there(tmp_path):
    """A pruned trial's worker killed while writing its end: the tables still say running, its stored epochs say
    pruned. Closed as pruned, it would have no checkpoints or predictions; it trains again to the epoch the stored
    decision stopped it at (never past it), is stopped there for the same reason, and the sweep ends as before."""
    from dataclasses import replace

    from orchestrator.decide.simulate import SimulatedBackend

    settings = settings_for()
    whole, storage = uninterrupted(tmp_path, settings)
    last = max(t.stage for t in whole.trials.values())
    victim = next(t for t in whole.trials.values() if t.stage == last and t.status == "pruned")
    record = read_record(storage)
    record.trials = [{**row, "status": "running"} if row["trial_id"] == victim.trial_id else row
                     for row in record.trials]

    closed = rebuild_controller(record)  # what a resume did with it, and still does when its end is on disk
    assert victim.trial_id in closed.closed

    rebuilt = rebuild_controller(replace(record, ends_cut_short=frozenset({victim.trial_id})))
    assert rebuilt.resumed == {victim.trial_id: victim.epochs_run} and not rebuilt.closed

    class Recording(SimulatedBackend):
        def start(self, assignment) -> None:
            started.append(assignment)
            super().start(assignment)

    started = []
    backend = Recording(quality, settings.slots)
    drive(rebuilt.controller, backend)
    assert [(a.trial_id, a.until_epoch, a.resume) for a in started] == [(victim.trial_id, victim.epochs_run, True)]
    assert backend.epochs_trained == victim.epochs_run  # back to its stop, not one epoch past it
    assert summary(rebuilt.controller) == summary(whole)


def test_a_sweep_from_before_pruner_options_is_resumed_with_a_line_saying_the_pruner_has_its_defaults(tmp_path):
    from orchestrator.app.lifecycle import PlugIns
    from orchestrator.app.resume import pruner_options_unrecorded
    from orchestrator.decide.pruning import MedianStoppingPruner

    settings = settings_for(pruner="median", pruner_options={"min_trials": 2})
    storage = crashed(tmp_path, settings, crash_at=4)
    path = str(tmp_path / "crashed")
    assert pruner_options_unrecorded(read_record(storage), PlugIns(), path) is None  # recorded: resumes as it ran
    row = storage.read_table(schema.SWEEP_PATH).to_pylist()[0]
    old = {k: v for k, v in json.loads(row["settings"]).items() if k != "pruner_options"}  # as caviar wrote it before
    storage.write_table(schema.SWEEP_PATH, schema.to_table([{**row, "settings": json.dumps(old)}], schema.SWEEP))
    line = pruner_options_unrecorded(read_record(storage), PlugIns(), path)
    assert "'median' pruner's defaults" in line and f"resume_sweep({path!r}, task=..., pruner=...)" in line
    given = PlugIns(MedianStoppingPruner(min_trials=2), None, None)
    assert pruner_options_unrecorded(read_record(storage), given, path) is None

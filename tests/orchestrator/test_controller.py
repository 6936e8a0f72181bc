"""The controller's state machine on plain data: sampling, decisions, retries, fail-fast, stage changes
and restore. Reports are written by hand here; no backend, no storage, no Ray, no torch."""

from __future__ import annotations

import math

import pytest

from orchestrator.decide.backend import START_FAILED, Report
from orchestrator.decide.controller import Controller, ControllerOptions
from orchestrator.decide.pruning import make_pruner
from orchestrator.decide.restore import StoredRows, restore
from orchestrator.decide.status import LEGAL, TrialStatus, checked_move
from orchestrator.errors import IllegalTransition, StorageError
from orchestrator.search.space import SearchSpace, choice, loguniform
from orchestrator.search.stages import parse_plan

SPACE = SearchSpace({"lr": loguniform(1e-4, 1.0), "act": choice(["relu", "tanh"])})


def controller(plan: str = "4x2,2x2", *, pruner: str = "none", **options) -> Controller:
    def pruner_for(stage):
        extra = {"grace_epochs": 1, "reduction_factor": 2} if pruner == "asha" else {}
        return make_pruner(pruner if stage.epochs > 1 else "none", max_epochs=stage.epochs, **extra)

    return Controller(SPACE, parse_plan(plan), pruner_for, ControllerOptions(seed=11, **options))


def row(trial_id: int, epoch: int, score: float, loss: float = 1.0) -> dict:
    return {"trial_id": trial_id, "epoch": epoch, "score": score, "train_loss": loss, "val_loss": loss,
            "val_accuracy": score, "num_classes": 10}


def start_all(c: Controller) -> list[int]:
    started = []
    while (a := c.next_assignment()) is not None:
        started.append(a.trial_id)
    return started


def finish(c: Controller, trial_id: int, scores: list[float]) -> None:
    rows = [row(trial_id, e, s) for e, s in enumerate(scores, start=1)]
    c.on_report(Report(trial_id, rows, ended=True, status="completed", reason="max_epochs"))


def test_a_stage_is_sampled_once_with_fixed_ids_configs_and_seeds():
    a, b = controller(), controller()
    assert [t.config for t in a.trials.values()] == [t.config for t in b.trials.values()]
    assert list(a.trials) == [0, 1, 2, 3] and list(a.pending) == [0, 1, 2, 3]
    assert len({t.seed for t in a.trials.values()}) == 4
    first = a.next_assignment()
    assert (first.trial_id, first.stage, first.until_epoch, first.attempt) == (0, 1, 2, 0)
    assert a.trials[0].status == TrialStatus.RUNNING == "running"


def test_a_stage_that_ends_begins_the_next_around_the_best_trials():
    c = controller()
    for tid in start_all(c):
        finish(c, tid, [0.2 + 0.1 * tid, 0.3 + 0.1 * tid])
    assert c.stage == 1 and list(c.pending) == [4, 5]
    assert [e["kind"] for e in c.events].count("stage_started") == 2
    promoted = [c.trials[t].config for t in (4, 5)]
    assert c.trials[3].config in promoted  # the best config of stage 1 is trained again (promotion)
    for tid in start_all(c):
        finish(c, tid, [0.5, 0.7])
    assert c.finished and c.best().stage == 1


def test_with_fewer_than_three_completed_a_diverged_trial_is_not_what_the_next_stage_narrows_around():
    """A config that scored 0.99 after one epoch and then blew up was the best of the stage's ended trials, so the
    next stage was narrowed around it and trained it again. Now, short of three completed trials, the diverged ones
    are judged only when nothing else ended with a score."""
    c = controller("4x3,2x3")
    start_all(c)
    rows = [row(0, 1, 0.99, loss=0.5), row(0, 2, 0.10, loss=9.0)]
    c.on_report(Report(0, rows, ended=True, status="pruned", reason="diverged"))
    finish(c, 1, [0.5, 0.55, 0.6])
    finish(c, 2, [0.6, 0.65, 0.7])
    c.on_report(Report(3, [row(3, 1, 0.4)], ended=True, status="pruned", reason="not_learning"))
    assert c.stage == 1
    assert [t.trial_id for t in c.judged_trials(0)] == [1, 2, 3]
    assert c.trials[0].config not in [c.trials[t].config for t in c.pending]
    assert c.trials[2].config in [c.trials[t].config for t in c.pending]


def test_a_stage_whose_every_ended_trial_diverged_is_still_judged_on_them():
    c = controller("2x3,2x3")
    start_all(c)
    for tid, score in ((0, 0.7), (1, 0.8)):
        rows = [row(tid, 1, score, loss=0.5), row(tid, 2, 0.1, loss=9.0)]
        c.on_report(Report(tid, rows, ended=True, status="pruned", reason="diverged"))
    assert c.stage == 1 and [t.trial_id for t in c.judged_trials(0)] == [0, 1]


def test_decisions_continue_to_the_next_rung_or_stop_below_it():
    c = controller("8x4", pruner="asha")
    start_all(c)
    decisions = [c.on_report(Report(t, [row(t, 1, 0.9 - 0.05 * t)])) for t in range(8)]  # worse as they come
    stops = [d for d in decisions if d.stop]
    assert stops and all(d.reason == "asha_rung_1" for d in stops)
    goes_on = [d for d in decisions if not d.stop]
    assert goes_on and all(d.until_epoch == 2 for d in goes_on)
    stopped = next(t for t, d in enumerate(decisions) if d.stop)
    c.on_stopped(stopped, "asha_rung_1")
    assert (c.trials[stopped].status, c.trials[stopped].reason) == ("pruned", "asha_rung_1")


def test_a_worker_that_never_started_costs_its_trial_no_attempt():
    """A trial queued on a worker whose start failed (import error on one node) never ran: it went back as attempt
    1, used up the retry budget, and the trials table said it ran twice. Now it goes back as the same attempt."""
    c = controller("2x2", max_retries=0)
    start_all(c)
    c.on_report(Report(0, lost=True, error=START_FAILED + "task 'a.py': importing it raised ImportError: cuda"))
    assert (c.trials[0].status, c.trials[0].attempt, c.pending[0]) == ("pending", 0, 0)
    again = c.next_assignment()
    assert (again.trial_id, again.attempt, again.resume) == (0, 0, False)
    assert [e["kind"] for e in c.events].count("trial_started") == 2  # trials 0 and 1, each once
    retried = [e for e in c.events if e["kind"] == "trial_retried"]
    assert [(e["reason"], e["detail"]["attempt"]) for e in retried] == [("worker_not_started", 0)]
    c.on_report(Report(0, lost=True, error="node died"))  # a real loss still spends the budget
    assert (c.trials[0].status, c.trials[0].reason) == ("failed", "executor_lost")


def test_a_lost_trial_is_retried_then_failed_and_fail_fast_stops_the_sweep():
    c = controller("6x2", max_retries=1, fail_fast=3)
    start_all(c)
    c.on_report(Report(0, [row(0, 1, 0.5)], lost=True, error="node died"))
    assert (c.trials[0].status, c.trials[0].attempt, c.pending[0]) == ("pending", 1, 0)
    again = c.next_assignment()
    assert (again.trial_id, again.attempt, again.resume) == (0, 1, True)
    c.on_report(Report(0, lost=True, error="node died"))
    assert (c.trials[0].status, c.trials[0].reason) == ("failed", "executor_lost")
    for tid in (1, 2):
        c.on_report(Report(tid, ended=True, status="failed", reason="error", error="ValueError: bad"))
    assert c.abort_reason and "the first 3 trials all failed" in c.abort_reason
    assert c.next_assignment() is None  # nothing new starts once the sweep is stopping
    c.on_report(Report(3, ended=True, status="failed", reason="error", error="ValueError: bad"))
    assert "the first 3 trials all failed" in c.abort_reason  # a later failure changes neither line nor events
    assert [e["kind"] for e in c.events].count("sweep_aborted") == 1


def test_a_sweep_whose_every_trial_failed_stops_even_below_fail_fast():
    c = controller("4x2", fail_fast=5)
    start_all(c)
    for tid in range(3):
        c.on_report(Report(tid, ended=True, status="failed", reason="error", error="ValueError: bad"))
        assert not c.abort_reason  # a trial still runs: it may yet succeed
    c.on_report(Report(3, ended=True, status="failed", reason="error", error="ValueError: bad"))
    assert c.abort_reason == "all 4 trials failed; most common error (4x): ValueError: bad"
    assert [e["kind"] for e in c.events][-1] == "sweep_aborted" and c.finished
    # Failed and interrupted ones only: a resume goes on with the interrupted, so the sweep is not stopped.
    c = controller("3x2", fail_fast=5)
    start_all(c)
    for tid in (0, 1):
        c.on_report(Report(tid, ended=True, status="failed", reason="error", error="ValueError: bad"))
    c.interrupt_running()
    c.settle()
    assert not c.abort_reason


NAN_LINE = ("objective val_brier was NaN while the losses were finite: the task's metrics returns NaN "
            "(a precision or F1 over a class never predicted?); make it return a number every epoch")


def test_a_nan_objective_with_finite_losses_fails_its_trial_naming_the_metric_not_divergence():
    c = controller("4x3", pruner="asha", fail_fast=5)
    c.objective = ("val_brier", "min")
    start_all(c)
    decision = c.on_report(Report(0, [row(0, 1, math.nan, loss=1.23)]))
    assert (decision.stop, decision.reason) == (True, "objective_nan")
    c.on_stopped(0, decision.reason)
    trial = c.trials[0]
    assert (trial.status, trial.reason) == ("failed", "objective_nan")
    assert trial.error == "epoch 1: val_brier NaN while train_loss 1.23 and val_loss 1.23 are finite\n" + NAN_LINE
    assert [(e["kind"], e["reason"]) for e in c.events][-1] == ("trial_failed", "objective_nan")
    # A worker that ran past the NaN epoch (no decision epoch between) still ends its trial for it.
    c.on_report(Report(1, [row(1, 1, 0.4), row(1, 2, math.nan), row(1, 3, 0.5)], ended=True,
                       status="completed", reason="max_epochs"))
    assert (c.trials[1].status, c.trials[1].reason) == ("failed", "objective_nan")
    assert c.trials[1].error.startswith("epoch 2: val_brier NaN")
    assert not c.abort_reason  # two trials still run: they may yet give numbers
    for tid in (2, 3):
        c.on_stopped(tid, c.on_report(Report(tid, [row(tid, 1, math.nan)])).reason)
    assert c.abort_reason == f"all 4 trials failed; most common error (4x): {NAN_LINE}"
    assert c.best().trial_id == 1  # its finite epochs stay on record (the metrics rows hold them)


def test_an_infinite_objective_of_a_regression_is_not_blamed_on_a_class_never_predicted():
    # An R² of the task's own over a validation split of one row is -inf: the line sent the user after a precision
    # or F1 "over a class never predicted", which a regression has none of.
    c = controller("2x3", pruner="asha", fail_fast=5)
    c.objective = ("val_r2own", "max")
    start_all(c)
    regression_row = {**row(0, 1, -math.inf), "val_accuracy": None, "num_classes": None}
    c.on_stopped(0, c.on_report(Report(0, [regression_row])).reason)
    assert c.trials[0].error.endswith(
        "objective val_r2own was infinite while the losses were finite: the task's metrics returns infinite (an R² "
        "or a correlation over validation targets that do not vary, as one row's?); make it return a number every "
        "epoch")


def test_restore_closes_an_interrupted_trial_whose_stored_epoch_had_a_nan_objective_as_the_live_run_would():
    live = controller("2x3")
    start_all(live)
    live.interrupt_running()
    trials = [dict(t.as_row(), config=t.config) for t in live.trials.values()]
    metrics = [{**row(0, 1, 0.5), "time": 1, "attempt": 0}, {**row(0, 2, math.nan), "time": 2, "attempt": 0}]
    fresh = controller("2x3")
    fresh.objective = ("val_brier", "min")
    rebuilt = restore(fresh, StoredRows([{"stage": 0, "trials": 2, "epochs": 3}], trials, metrics, {0: 0}), [SPACE])
    trial = rebuilt.controller.trials[0]
    assert rebuilt.closed == [0] and (trial.status, trial.reason) == ("failed", "objective_nan")
    assert trial.error.endswith(NAN_LINE) and trial.error.startswith("epoch 2: val_brier NaN")


def test_statuses_move_only_along_legal_transitions():
    assert checked_move(1, "pending", "running") == TrialStatus.RUNNING
    assert checked_move(1, "running", "running") == TrialStatus.RUNNING  # staying put is no move
    for ended in (TrialStatus.COMPLETED, TrialStatus.PRUNED, TrialStatus.FAILED):
        assert not LEGAL[ended]
        with pytest.raises(IllegalTransition, match=f"trial 1: {ended} -> running"):
            checked_move(1, ended, "running")
    with pytest.raises(IllegalTransition):
        checked_move(1, "pending", "completed")  # a trial never ends without having run
    c = controller("2x2")
    start_all(c)
    finish(c, 0, [0.5, 0.6])
    with pytest.raises(IllegalTransition):  # a late report of an ended trial cannot revive it
        c.on_report(Report(0, [row(0, 2, 0.7)], ended=True, status="failed"))


def test_interrupting_marks_running_trials_and_restore_requeues_them_under_a_new_attempt():
    live = controller("4x3")
    start_all(live)
    live.on_report(Report(0, [row(0, 1, 0.4), row(0, 2, 0.5)]))
    finish(live, 1, [0.3, 0.4, 0.5])
    assert live.interrupt_running() == [0, 2, 3]
    assert [live.trials[t].status for t in range(4)] == ["interrupted", "completed", "interrupted", "interrupted"]
    trials = [dict(t.as_row(), config=t.config) for t in live.trials.values()]
    metrics = [{**row(0, 1, 0.4), "time": 1, "attempt": 0}, {**row(0, 2, 0.5), "time": 2, "attempt": 0}]
    stored = StoredRows(stages=[{"stage": 0, "trials": 4, "epochs": 3}], trials=trials, metrics=metrics,
                        last_attempt={0: 0})
    rebuilt = restore(controller("4x3"), stored, [SPACE])
    c = rebuilt.controller
    assert rebuilt.resumed == {0: 2, 2: 0, 3: 0}
    assert [c.trials[t].status for t in range(4)] == ["pending", "completed", "pending", "pending"]
    assert (c.trials[0].attempt, c.trials[0].epochs_run, c.trials[0].best_score) == (1, 2, 0.5)
    assert list(c.pending) == [0, 2, 3]
    assert c.next_assignment().resume


def test_restore_closes_a_trial_its_stored_epochs_already_ended_and_names_contradictions():
    live = controller("2x2")
    start_all(live)
    live.interrupt_running()
    trials = [dict(t.as_row(), config=t.config) for t in live.trials.values()]
    metrics = [{**row(0, e, 0.5), "time": e, "attempt": 0} for e in (1, 2)]
    rows = StoredRows([{"stage": 0, "trials": 2, "epochs": 2}], trials, metrics, {0: 0})
    rebuilt = restore(controller("2x2"), rows, [SPACE])
    assert rebuilt.closed == [0] and rebuilt.controller.trials[0].status == "completed"
    bad = [dict(trials[0], status="exploded"), trials[1]]
    with pytest.raises(StorageError, match=r"trials/trials.parquet: unknown trial status 'exploded'"):
        restore(controller("2x2"), StoredRows(rows.stages, bad, []), [SPACE])
    with pytest.raises(StorageError, match=r"3x2 does not match the stored plan's stage 1"):
        restore(controller("2x2"), StoredRows([{"stage": 0, "trials": 3, "epochs": 2}], trials, []), [SPACE])


def test_best_prefers_the_last_stage_and_ignores_trials_without_a_score():
    c = controller("2x1,2x2")
    for tid in start_all(c):
        finish(c, tid, [0.9 if tid == 0 else 0.1])
    for tid in start_all(c):
        finish(c, tid, [0.2, 0.3 + tid * 0.01])
    best = c.best()
    assert best.stage == 1 and math.isclose(best.best_score, 0.33)


def test_best_among_stages_of_equal_epochs_is_the_best_score_not_the_later_stage():
    # A plan 2x2,2x2 trains both stages for 2 epochs: its answer was stage 2's best (0.33) beside stage 1's 0.9.
    c = controller("2x2,2x2")
    for tid in start_all(c):
        finish(c, tid, [0.5, 0.9 if tid == 0 else 0.1])
    for tid in start_all(c):
        finish(c, tid, [0.2, 0.3 + tid * 0.01])  # trial 0's config again, unluckily, and a fresh sample
    best = c.best()
    assert (best.trial_id, best.stage) == (0, 0) and math.isclose(best.best_score, 0.9)
    c2 = controller("2x2,2x2")
    for tid in start_all(c2):
        finish(c2, tid, [0.5, 0.6])
    for tid in start_all(c2):
        finish(c2, tid, [0.5, 0.6])
    assert c2.best().stage == 1  # a tie: the later stage, as before


def test_while_a_longer_stage_has_no_completed_trial_the_best_stays_in_the_stage_before():
    """One epoch into stage 2 (2 of its 8), its running trial's 0.4 was the live view's and a stopped run's best
    over stage 1's 0.9, while `caviar top` kept stage 1's: one rule now (best_trial_rank's stage_done)."""
    c = controller("2x2,2x8")
    for tid in start_all(c):
        finish(c, tid, [0.5, 0.9 if tid == 0 else 0.1])
    running = start_all(c)
    c.on_report(Report(running[0], [row(running[0], 1, 0.4)]))
    assert c.best().trial_id == 0
    finish(c, running[1], [0.3, 0.35])  # once a trial of it completes, the stage that trained longest goes first
    assert c.best().stage == 1


def test_a_replay_that_meets_a_rung_in_another_order_keeps_judging_the_trial_from_its_first_loss():
    # Live, trial 1's epoch 1 reached the master before trial 0's (two workers, written 1 ms apart): alone at the
    # rung, it went on. Replayed in the order the rows were written it loses the rung, and the replay, following the
    # live run past that stop, judged its later epochs from epoch 2's loss: 1.8 is over 4 x 0.4, so a resume
    # closed it as diverged, while its first loss, 2.0, says it is not
    losses = [2.0, 0.4, 0.5, 0.9, 1.8]
    live = controller("2x9", pruner="asha")
    start_all(live)
    assert not live.on_report(Report(1, [row(1, 1, 0.3, losses[0])])).stop
    assert not live.on_report(Report(0, [row(0, 1, 0.6)])).stop
    for epoch in range(2, 6):
        assert not live.on_report(Report(1, [row(1, epoch, 0.3 + 0.05 * epoch, losses[epoch - 1])])).stop
    live.interrupt_running()
    trials = [dict(t.as_row(), config=t.config) for t in live.trials.values()]
    metrics = [{**row(0, 1, 0.6), "time": 1, "attempt": 0}]
    metrics += [{**row(1, e, 0.3 + 0.05 * e if e > 1 else 0.3, losses[e - 1]), "time": e + 1, "attempt": 0}
                for e in range(1, 6)]
    rebuilt = restore(controller("2x9", pruner="asha"),
                      StoredRows([{"stage": 0, "trials": 2, "epochs": 9}], trials, metrics, {0: 0, 1: 0}), [SPACE])
    assert rebuilt.closed == [] and rebuilt.resumed == {0: 1, 1: 5}
    assert rebuilt.controller.trials[1].status == "pending"


def test_a_range_narrowed_event_that_changed_no_range_says_so():
    """A stage whose results left every range as it was (each option tried too rarely to drop) wrote a
    range_narrowed event with no reason, as if it had narrowed (prune44 noticed it); a stage that did narrow gives
    none, as before."""
    only_options = SearchSpace({"act": choice(["relu", "tanh", "gelu"])})
    c = Controller(only_options, parse_plan("4x2,4x2"), lambda stage: make_pruner("none", max_epochs=stage.epochs),
                   ControllerOptions(seed=11))
    for tid in start_all(c):
        finish(c, tid, [0.5, 0.6 + 0.05 * tid])
    event = next(e for e in c.events if e["kind"] == "range_narrowed")
    assert event["reason"] == "stage 1's results left every range as it was"
    assert event["detail"]["space"] == only_options.to_dict()
    narrowing = controller("4x2,4x2")
    for tid in start_all(narrowing):
        finish(narrowing, tid, [0.5, 0.6 + 0.05 * tid])
    assert next(e for e in narrowing.events if e["kind"] == "range_narrowed")["reason"] is None

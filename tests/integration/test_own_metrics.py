"""A task's own metrics and objective, swept end to end on the processes executor with tasks of tests/tasks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from orchestrator.app.api import load, run_sweep
from orchestrator.app.resume import read_record
from orchestrator.ensemble.ensemble_run import read_dataset, read_ensembles
from orchestrator.spec.task import load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

TASKS = os.path.join(ROOT, "tests", "tasks")


@pytest.mark.parametrize("task_file", ["metric43_inplace_metric_task.py", "metric43_inplace_corr_task.py",
                                       "metric43_inplace_smoothing_loss_task.py"])
def test_a_function_that_edits_the_tensors_it_gets_leaves_the_splits_targets_alone(tmp_path, task_file):
    """``y = targets.numpy(); y[y > 0] = 1`` (merging classes) or ``y -= y.mean()`` (a correlation) in a metric, or
    label smoothing with ``targets.mul_(...)`` in a loss_fn, writes through to the tensor the function was given. The
    targets the sweep stores and scores against stay those of load_data."""
    path = os.path.join(TASKS, task_file)
    result = run_sweep(path, storage=str(tmp_path), name="inplace", plan="2x2", slots=1, seed=0, pruner="none",
                       executor="processes")
    _, (_, y_val), (_, y_test) = load_task(path).get("load_data")()
    dataset = read_dataset(Storage.from_uri(result.path))
    assert np.array_equal(dataset.y_val.reshape(y_val.shape), y_val)
    assert np.array_equal(dataset.y_test.reshape(y_test.shape), y_test)
    if dataset.kind == "regression":  # the val MSE of the best epoch is a model's, not one against centred targets
        best = min(r["val_loss"] for r in load(result.path).metrics.to_pylist())
        assert best < np.var(y_val)
    if load_task(path).get("loss_fn") is not None:  # every ensemble scored on the same targets: the best checkpoint
        single = next(e for e in read_ensembles(Storage.from_uri(result.path)) if e.name == "single")
        best = min(r["val_loss"] for r in load(result.path).checkpoints.to_pylist())
        assert single.detail["val_objective"] == pytest.approx(best, rel=1e-3)


def test_a_regression_ranked_by_its_own_correlation_is_never_pruned_as_not_learning_by_its_mse(tmp_path):
    """Targets near 50 trained as they are: after one epoch every trial's MSE is far worse than predicting the
    training mean, while its correlation is high. The not-learning rule judges only caviar's own measures of fit."""
    result = run_sweep(os.path.join(TASKS, "metric43_correlation_task.py"), storage=str(tmp_path), name="corr",
                       stages=1, pruner="asha", slots=1, seed=0, executor="processes")
    tables = load(result.path)
    first = [r for r in tables.metrics.to_pylist() if r["epoch"] == 1]
    baseline = schema.read_dataset_row(Storage.from_uri(result.path))["baseline_val_loss"]
    assert first and all(r["val_loss"] > 10 * baseline for r in first)  # the premise: MSE far worse than chance...
    assert max(dict(r["metrics"])["val_corr"] for r in first) > 0.8  # ...for a trial that already ranks well
    assert [t["reason"] for t in tables.trials.to_pylist()] == ["max_epochs", "max_epochs"]
    # A resume judges its replayed epochs the same way
    assert read_record(Storage.from_uri(result.path)).baseline_val_loss is None


@pytest.mark.parametrize("task_file, objective", [("metric43_offset_regression_task.py", "val_max_error"),
                                                  ("metric43_soft_kl_task.py", "val_kl")])
def test_a_minimised_metric_of_the_tasks_own_ranks_trials_checkpoints_and_ensembles_the_same_way(tmp_path, task_file,
                                                                                              objective):
    """Two-output regression near 5000 (a worst-case error returned as a tensor) and soft labels (a KL divergence
    returned as a numpy float), both lower-is-better, with EMA weights: every score is the metric negated, the best
    trial and the best single model are the lowest, and the chosen ensemble is the lowest on validation."""
    result = run_sweep(os.path.join(TASKS, task_file), storage=str(tmp_path), name="min", plan="4x2,2x3", slots=2,
                       seed=0, pruner="asha", executor="processes")
    tables = load(result.path)
    rows = tables.metrics.to_pylist()
    assert rows and all(r["score"] == pytest.approx(-dict(r["metrics"])[objective]) for r in rows)
    for trial in tables.trials.to_pylist():
        mine = [dict(r["metrics"])[objective] for r in rows if r["trial_id"] == trial["trial_id"]]
        assert trial["best_score"] == pytest.approx(-min(mine))
    kept = tables.checkpoints.to_pylist()
    assert all(c["score"] == pytest.approx(-dict(c["metrics"])[objective]) for c in kept)
    assert {c["weights"] for c in kept} == {"raw", "ema"}
    records = read_ensembles(Storage.from_uri(result.path))
    single = next(e for e in records if e.name == "single")
    chosen = next(e for e in records if e.chosen)
    assert single.detail["sweep_objective"] == f"{objective} (min)"
    assert single.detail["val_objective"] == pytest.approx(min(dict(c["metrics"])[objective] for c in kept), rel=1e-3)
    assert chosen.detail["val_objective"] == min(e.detail["val_objective"] for e in records)


def test_a_sweep_ranked_by_a_metric_a_constant_answer_wins_says_that_nothing_learned(tmp_path):
    """The recall of one class is 1.0 for a model that always predicts that class. A sweep ranked by it kept and
    ensembled whatever reached 1.0 without a word, as caviar judged only its own columns against a do-nothing
    answer. Now the task's metric scores the constant answers on validation, and a best trial no better than the best
    of them ends the sweep with a warning and a no_trial_learned event; the mean recall over classes (1/3 for any
    constant answer) does not."""
    result = run_sweep(os.path.join(TASKS, "objective46_recall_task.py"), storage=str(tmp_path), name="recall",
                       plan="2x2", slots=1, seed=0, pruner="none", executor="processes")
    dataset = schema.read_dataset_row(Storage.from_uri(result.path))
    assert (dataset["baseline_objective"], dataset["baseline_answer"]) == (1.0, "always predicting class 1")
    said = [w for w in result.warnings if w.startswith("no trial did better on val_recall1")]
    assert len(said) == 1 and "than always predicting class 1, an answer that ignores the inputs (val_recall1 1 on " \
                               "validation; the best trial " in said[0]
    events = load(result.path).to_pandas("events")
    assert list(events[events.kind == "no_trial_learned"].reason) == said

    learned = run_sweep(os.path.join(TASKS, "objective46_macro_recall_task.py"), storage=str(tmp_path),
                        name="macro", plan="2x2", slots=1, seed=0, pruner="none", executor="processes")
    row = schema.read_dataset_row(Storage.from_uri(learned.path))
    assert row["baseline_objective"] == pytest.approx(1 / 3)
    assert not [w for w in learned.warnings if "ignores the inputs" in w]

"""Regression, soft labels and a task's own metric, swept on a real local Ray: every number recomputed.

The tables' numbers for the best trial are checked against a recomputation from its stored
checkpoint on the task's own float targets (no caviar code between the weights and the check but
the input standardisation), so a silent cast or a unit left standardised would show here.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from orchestrator.app.api import load, run_sweep
from orchestrator.app.cli import app, main
from orchestrator.ensemble.ensemble_run import CandidateKey, read_dataset, read_ensembles
from orchestrator.errors import ConfigError
from orchestrator.spec.task import load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import ROOT
from worker.load.ensemble_model import SweepModels, load_ensemble

TASKS = os.path.join(ROOT, "tests", "tasks")


def sweep(task_file: str, storage: str, **overrides):
    options = {"plan": "3x2", "slots": 2, "seed": 3, "ensemble": False, "pruner": "none", **overrides}
    return run_sweep(os.path.join(TASKS, task_file), storage=storage, name=task_file.removesuffix(".py"), **options)


def standardised(task, x: np.ndarray) -> torch.Tensor:
    """Inputs as the workers see them: standardised with training-split statistics."""
    (x_train, _), _, _ = task.get("load_data")()
    mean, std = x_train.mean(axis=0, keepdims=True), x_train.std(axis=0, ddof=1, keepdims=True)
    return torch.from_numpy((x - mean) / np.maximum(std, 1e-6)).float()


def best_checkpoint(tables, trial_id: int) -> dict:
    rows = [r for r in tables.checkpoints.to_pylist() if r["trial_id"] == trial_id and r["weights"] == "raw"]
    return max(rows, key=lambda r: r["score"])


def metric_map(row: dict) -> dict[str, float]:
    return dict(row["metrics"] or [])


def test_regression_table_numbers_equal_a_recomputation_in_original_units(ray_session, storage_dir):
    result = sweep("regression_task.py", storage_dir, ensemble=True)
    tables = load(result.path)
    assert result.counts.get("failed", 0) == 0
    best = result.best_trial_id
    ckpt = best_checkpoint(tables, best)
    task = load_task(os.path.join(TASKS, "regression_task.py"))
    models = SweepModels(Storage.from_uri(result.path), trust_task_code=True)
    model = models.model(CandidateKey(best, ckpt["epoch"], "raw"))
    _, (x_val, y_val), (x_test, y_test) = task.get("load_data")()
    recorded = metric_map(ckpt)
    (x_train, y_train), _, _ = task.get("load_data")()
    # The model trained on standardised targets; its outputs are mapped back with the training statistics.
    mean, std = float(np.mean(y_train)), float(np.std(y_train, ddof=1))
    with torch.no_grad():
        for split, x, y in (("val", x_val, y_val), ("test", x_test, y_test)):
            predicted = model(standardised(task, x)).squeeze(1).double().numpy() * std + mean
            mse = float(np.mean((predicted - y.astype(np.float64)) ** 2))
            assert recorded[f"{split}_mse"] == pytest.approx(mse, rel=1e-4)
            assert recorded[f"{split}_mae"] == pytest.approx(float(np.mean(np.abs(predicted - y))), rel=1e-4)
            assert recorded[f"{split}_loss"] == pytest.approx(mse, rel=1e-4)
    # The epoch's metrics row says the same, and the score is minus the objective (val_mse, minimised).
    epoch_row = next(r for r in tables.metrics.to_pylist() if r["trial_id"] == best and r["epoch"] == ckpt["epoch"])
    assert metric_map(epoch_row)["val_mse"] == pytest.approx(recorded["val_mse"], rel=1e-6)
    assert epoch_row["score"] == pytest.approx(-recorded["val_mse"], rel=1e-9)
    assert epoch_row["val_accuracy"] is None and epoch_row["train_accuracy"] is None
    # A regressor that learned something beats predicting the mean (variance of y_val is the baseline MSE).
    assert recorded["val_mse"] < float(np.var(y_val))
    # The pruners' "chance" for a regressor, kept for a resume: the val MSE of predicting the training mean.
    chance = float(np.mean((y_val.astype(np.float64) - np.mean(y_train, dtype=np.float64)) ** 2))
    stored = Storage.from_uri(result.path).read_table(schema.DATASET_PATH)["baseline_val_loss"][0].as_py()
    assert stored == pytest.approx(chance, rel=1e-6)
    trials = {t["trial_id"]: t for t in tables.trials.to_pylist()}
    losses = [r["val_loss"] for r in tables.metrics.to_pylist() if r["trial_id"] == best]
    assert trials[best]["best_val_loss"] == pytest.approx(min(losses))
    # The chosen ensemble averages outputs, is chosen on validation MSE, and loads as a module that
    # predicts in the targets' original units from raw inputs.
    rows = read_ensembles(Storage.from_uri(result.path))
    assert {r.method for r in rows} >= {"single", "top_k", "greedy"}
    chosen = next(r for r in rows if r.chosen)
    assert chosen.val_mse == min(r.val_mse for r in rows) and chosen.selection_metric == "mse"
    ensemble = load_ensemble(result.path, trust_task_code=True)  # the sweep's own copy of the test task
    predicted = ensemble.predict(torch.from_numpy(x_test)).numpy()
    assert predicted.shape == y_test.shape
    assert chosen.test_mse == pytest.approx(float(np.mean((predicted - y_test.astype(np.float64)) ** 2)), rel=1e-4)
    listed = CliRunner().invoke(app, ["ls", storage_dir], env={"COLUMNS": "250"})  # its test MSE, not "-"
    assert listed.exit_code == 0 and f"(test MSE {chosen.test_mse:.4g})" in listed.output


def test_soft_labels_give_the_soft_target_cross_entropy(ray_session, storage_dir):
    result = sweep("soft_label_task.py", storage_dir, ensemble=True)
    tables = load(result.path)
    assert result.counts.get("failed", 0) == 0
    task = load_task(os.path.join(TASKS, "soft_label_task.py"))
    _, (x_val, y_val), _ = task.get("load_data")()
    models = SweepModels(Storage.from_uri(result.path), trust_task_code=True)
    for trial_id in {r["trial_id"] for r in tables.metrics.to_pylist()}:
        ckpt = best_checkpoint(tables, trial_id)
        model = models.model(CandidateKey(trial_id, ckpt["epoch"], "raw"))
        with torch.no_grad():
            log_probs = torch.log_softmax(model(standardised(task, x_val)).double(), dim=1).numpy()
        soft_ce = float(-(y_val * log_probs).sum(axis=1).mean())
        assert ckpt["val_loss"] == pytest.approx(soft_ce, rel=1e-4)
        assert metric_map(ckpt)["val_log_loss"] == pytest.approx(soft_ce, rel=1e-4)
        # Soft labels never look "perfect": the soft-target cross-entropy is at least the targets' entropy.
        entropy = float(-(y_val * np.log(y_val)).sum(axis=1).mean())
        assert ckpt["val_loss"] > entropy - 1e-6
        assert not math.isclose(ckpt["val_accuracy"], 1.0) or ckpt["val_loss"] > entropy
    # Ensembles choose on the same soft-target cross-entropy, recomputed here from the loaded chosen ensemble.
    chosen = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.chosen)
    assert chosen.detail["chosen_by"] == "val_log_loss" and "soft" in chosen.detail["labels"]
    with torch.no_grad():
        probs = load_ensemble(result.path, trust_task_code=True)(torch.from_numpy(x_val)).double().numpy()
    assert chosen.val_log_loss == pytest.approx(float(-(y_val * np.log(probs)).sum(axis=1).mean()), rel=2e-3)
    assert chosen.val_accuracy == pytest.approx(float((probs.argmax(1) == y_val.argmax(1)).mean()), abs=1 / len(y_val))


def chosen_ensemble_recomputed(result, task_file: str, score) -> tuple:
    """The chosen row, and ``score(logits, targets)`` of the loaded chosen ensemble on the validation split.

    The task's functions get ``log`` of the ensemble's averaged probabilities as logits, as in the selection.
    """
    chosen = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.chosen)
    task = load_task(os.path.join(TASKS, task_file))
    _, (x_val, y_val), _ = task.get("load_data")()
    with torch.no_grad():
        probs = load_ensemble(result.path, trust_task_code=True)(torch.from_numpy(x_val))
        return chosen, float(score(torch.log(probs), torch.from_numpy(y_val)))


def test_custom_metric_with_mode_min_is_the_score(ray_session, storage_dir):
    result = sweep("custom_metric_task.py", storage_dir, plan="6x1,2x2", pruner="asha", ensemble=True,
                   prediction_dtype="float32")
    tables = load(result.path)
    rows = tables.metrics.to_pylist()
    assert rows and all(r["score"] == pytest.approx(-metric_map(r)["val_brier"]) for r in rows)
    best_brier = {}
    for r in rows:
        best_brier[r["trial_id"]] = min(best_brier.get(r["trial_id"], math.inf), metric_map(r)["val_brier"])
    # The sweep's best trial is the one with the lowest Brier score, not the highest accuracy.
    assert result.best_trial_id == min(best_brier, key=best_brier.get)
    assert result.best_score == pytest.approx(-min(best_brier.values()))
    # Promotion to stage 2 followed the objective: the promoted configs are stage 1's lowest Brier scores.
    trials = tables.trials.to_pylist()
    # tables number stages from 1
    stage0 = sorted((t for t in trials if t["stage"] == 1), key=lambda t: best_brier[t["trial_id"]])
    promoted = [t["config"] for t in trials if t["stage"] == 2 and t["config"] in [s["config"] for s in stage0]]
    assert promoted == [stage0[0]["config"]]  # one promotion (half of 2 trials): the lowest Brier score
    # The ensembles were chosen by the Brier score too: every row records it, the chosen one has the lowest,
    # and the loaded chosen ensemble's Brier score on validation is the recorded one.
    rows = read_ensembles(Storage.from_uri(result.path))
    assert all(r.detail["chosen_by"] == "val_brier" and "choice_note" not in r.detail for r in rows)
    task = load_task(os.path.join(TASKS, "custom_metric_task.py"))
    chosen, brier = chosen_ensemble_recomputed(result, "custom_metric_task.py",
                                               lambda logits, y: task.get("metrics")(logits, y)["brier"])
    assert chosen.detail["val_objective"] == min(r.detail["val_objective"] for r in rows if r.method != "soup"
                                                 or r.detail.get("helped"))
    assert chosen.detail["val_objective"] == pytest.approx(brier, rel=1e-4)
    assert chosen.detail["test_objective"] is not None
    # caviar ensemble: without task code the Brier score cannot choose, and the note names the flags that let it.
    plain = CliRunner().invoke(app, ["ensemble", result.path, "-m", "top_k"])
    assert plain.exit_code == 0, plain.output
    assert "not by the sweep's objective val_brier" in plain.output and "--trust-task-code" in plain.output
    trusted = CliRunner().invoke(app, ["ensemble", result.path, "-m", "top_k", "--trust-task-code"])
    assert trusted.exit_code == 0, trusted.output
    assert "brier val / test" in trusted.output and "not by the sweep's objective" not in trusted.output
    assert all(r.detail["chosen_by"] == "val_brier" for r in read_ensembles(Storage.from_uri(result.path)))
    # --choose-by beside an objective that chooses was ignored without a word
    asked = CliRunner().invoke(app, ["ensemble", result.path, "-m", "top_k", "--trust-task-code", "--choose-by",
                                     "accuracy"])
    assert asked.exit_code == 0, asked.output
    assert "caviar: --choose-by accuracy not used: the sweep's objective ranked and chose instead: val_brier" in \
        asked.output


def test_a_custom_loss_fn_with_objective_val_loss_chooses_the_ensemble(ray_session, storage_dir):
    result = sweep("custom_loss_task.py", storage_dir, plan="4x2", ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    rows = read_ensembles(Storage.from_uri(result.path))
    assert all(r.detail["chosen_by"] == "val_loss" and "choice_note" not in r.detail for r in rows)
    task = load_task(os.path.join(TASKS, "custom_loss_task.py"))
    chosen, loss = chosen_ensemble_recomputed(result, "custom_loss_task.py", task.get("loss_fn"))
    assert chosen.detail["val_objective"] == pytest.approx(loss, rel=1e-4)
    eligible = [r for r in rows if r.method != "soup" or r.detail.get("helped")]
    assert chosen.detail["val_objective"] == min(r.detail["val_objective"] for r in eligible)
    # The single row's recorded value is the worker's own val_loss of that checkpoint (the same loss_fn).
    single = next(r for r in rows if r.method == "single")
    key = single.members[0].key
    ckpt = next(c for c in load(result.path).checkpoints.to_pylist()
                if (c["trial_id"], c["epoch"], c["weights"]) == (key.trial_id, key.epoch, key.weights))
    assert single.detail["val_objective"] == pytest.approx(ckpt["val_loss"], rel=1e-4)


def test_a_regression_with_its_own_loss_fn_is_ranked_on_that_loss(storage_dir):
    # Poisson NLL on log-rates: the outputs' squared error against the counts ranks nothing; the task's loss does.
    result = sweep("poisson_regression_task.py", storage_dir, plan="4x2", ensemble=True, executor="processes")
    assert result.counts.get("failed", 0) == 0
    rows = load(result.path).metrics.to_pylist()
    assert rows and all(r["score"] == pytest.approx(-r["val_loss"]) for r in rows)
    assert read_dataset(Storage.from_uri(result.path)).objective == "val_loss"
    records = read_ensembles(Storage.from_uri(result.path))
    assert all(r.detail["chosen_by"] == "val_loss" for r in records)
    chosen = next(r for r in records if r.chosen)
    assert chosen.detail["val_objective"] == min(r.detail["val_objective"] for r in records)
    task = load_task(os.path.join(TASKS, "poisson_regression_task.py"))
    _, (x_val, y_val), _ = task.get("load_data")()
    with torch.no_grad():  # the loaded ensemble's averaged log-rates, scored by the task's loss
        log_rates = load_ensemble(result.path, trust_task_code=True)(torch.from_numpy(x_val))
        loss = float(task.get("loss_fn")(log_rates, torch.from_numpy(y_val).double()))
    assert chosen.detail["val_objective"] == pytest.approx(loss, rel=1e-4)
    # Rebuilt without the task's code, only MSE can score the stored log-rates: every row says so.
    rebuilt = CliRunner().invoke(app, ["ensemble", result.path])
    assert rebuilt.exit_code == 0, rebuilt.output
    rows = read_ensembles(Storage.from_uri(result.path))
    assert all(r.detail["chosen_by"] == "val_mse" for r in rows)
    assert all("not by the sweep's objective val_loss" in r.detail["choice_note"] for r in rows)
    again = CliRunner().invoke(app, ["ensemble", result.path, "--trust-task-code"])
    assert again.exit_code == 0, again.output
    rows = read_ensembles(Storage.from_uri(result.path))
    assert all(r.detail["chosen_by"] == "val_loss" and "choice_note" not in r.detail for r in rows)


def test_a_squeezed_heads_loss_fn_scores_each_ensemble_on_outputs_shaped_as_the_members_give_them(storage_dir):
    # The ensembles' outputs reached loss_fn as (N, 1) where the members give (N,): huber_loss((N, 1), (N,))
    # broadcast to (N, N), and every ensemble's val_loss, hence the choice, was another number.
    task_file = "squeezed_head_loss_task.py"
    result = sweep(task_file, storage_dir, plan="4x2", ensemble=True, executor="processes")
    task = load_task(os.path.join(TASKS, task_file))
    _, (x_val, y_val), (x_test, y_test) = task.get("load_data")()
    records = read_ensembles(Storage.from_uri(result.path))
    assert len(records) >= 3 and all(r.detail["chosen_by"] == "val_loss" for r in records)
    for r in records:
        model = load_ensemble(result.path, name=r.name, trust_task_code=True)
        with torch.no_grad():
            for split, x, y in (("val", x_val, y_val), ("test", x_test, y_test)):
                outputs = model(torch.from_numpy(x))
                assert outputs.shape == y.shape
                loss = float(task.get("loss_fn")(outputs, torch.from_numpy(y).double()))
                assert r.detail[f"{split}_objective"] == pytest.approx(loss, rel=1e-4), (r.name, split)


def test_a_regression_sweeps_seed_copies_make_a_seeds_ensemble(storage_dir):
    result = sweep("regression_task.py", storage_dir, plan="4x2", ensemble=True, executor="processes", seed_copies=2)
    trials = {t["trial_id"]: t for t in load(result.path).trials.to_pylist()}
    seeds = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.method == "seeds")
    configs = {json.dumps(trials[m.key.trial_id]["config"], sort_keys=True) for m in seeds.members}
    assert len(seeds.members) == 3 and len(configs) == 1  # the best config and its two copies
    _, _, (x_test, y_test) = load_task(os.path.join(TASKS, "regression_task.py")).get("load_data")()
    predicted = load_ensemble(result.path, name="seeds", trust_task_code=True).predict(torch.from_numpy(x_test))
    assert seeds.test_mse == pytest.approx(float(np.mean((predicted.numpy() - y_test.astype(np.float64)) ** 2)),
                                           rel=1e-4)
    # a regression's ensembles go by validation MSE: --metric and --choose-by were ignored without a word
    asked = CliRunner().invoke(app, ["ensemble", result.path, "--metric", "accuracy", "--choose-by", "accuracy"])
    assert asked.exit_code == 0, asked.output
    assert ("caviar: --metric accuracy and --choose-by accuracy not used: a regression's ensembles are ranked and "
            "chosen by val_mse") in asked.output
    plain = CliRunner().invoke(app, ["ensemble", result.path])
    assert plain.exit_code == 0 and "not used" not in plain.output


def test_overwriting_a_sweep_leaves_nothing_of_the_old_ones_objective(storage_dir):
    # The old sweep ranked on its own metric val_ev (max); the new one stores no predictions, so no worker rewrote
    # dataset/: caviar top and ls named the new sweep's -MSE scores "best val_ev".
    sweep("small_units_regression_task.py", storage_dir, plan="2x1", executor="processes")
    path = os.path.join(storage_dir, "small_units_regression_task")
    storage = Storage.from_uri(path)
    assert schema.read_dataset_row(storage)["objective"] == "val_mse"
    storage.write_table(schema.DATASET_PATH, schema.to_table(  # as another task's sweep of this name left it
        [{**schema.read_dataset_row(storage), "objective": "val_ev", "mode": "max"}], schema.DATASET))
    sweep("small_units_regression_task.py", storage_dir, plan="2x1", executor="processes", overwrite=True,
          prediction_dtype="none")
    assert schema.read_dataset_row(storage).get("objective") != "val_ev"
    shown = CliRunner().invoke(app, ["top", path], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "val_ev" not in shown.output


def test_a_regression_in_small_units_shows_its_numbers_not_zeros(storage_dir):
    # Targets of about 1e-3 (metres): four decimals printed every MSE, every trial's and the answer's, as 0.0000.
    from orchestrator.app.answer import ensemble_lines

    result = sweep("small_units_regression_task.py", storage_dir, plan="4x2", ensemble=True, executor="processes")
    best = load(result.path).top(1).to_pylist()[0]
    shown = f"{-best['best_score']:.4g}"
    assert 1e-9 < -best["best_score"] < 1e-5 and "e-0" in shown
    answer = "\n".join(ensemble_lines(result.path))
    chosen = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.chosen)
    assert f"{chosen.val_mse:.4g}" in answer and "0.0000" not in answer
    for command in (["top", result.path], ["status", result.path], ["ls", storage_dir]):
        out = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
        assert out.exit_code == 0 and shown in out.output and "0.0000" not in out.output, (command, out.output)


def test_a_regression_in_small_units_ranked_by_its_own_metric_lists_its_ensemble_not_zero(storage_dir):
    # Minus the MAE in metres, about -1e-4: caviar ls printed the chosen ensemble as "greedy (test_neg_mae -0.0000)".
    result = sweep("small_units_own_metric_task.py", storage_dir, plan="4x2", ensemble=True, executor="processes")
    chosen = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.chosen)
    test_value = chosen.detail["test_objective"]
    assert -1e-2 < test_value < 0
    out = CliRunner().invoke(app, ["ls", storage_dir], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and f"(test_neg_mae {test_value:.4g})" in out.output, out.output
    assert "0.0000" not in out.output


def test_a_streamed_sweep_trains_plain_and_says_why_it_did_not_fuse(ray_session, storage_dir):
    result = sweep("streamed_task.py", storage_dir, plan="2x1", slots=1, fuse="auto", ensemble=True)
    tables = load(result.path)
    assert result.counts == {"completed": 2}
    reasons = [e["reason"] for e in tables.events.to_pylist() if e["kind"] == "fusing_off"]
    assert reasons and "streams from torch Datasets" in reasons[0]
    # Classification ensembles work on streamed data: the dataset row knows the inputs' shape and statistics.
    ensemble = load_ensemble(result.path, trust_task_code=True)  # the sweep's own copy of the test task
    task = load_task(os.path.join(TASKS, "streamed_task.py"))
    x, labels = zip(*(task.get("Blobs")("test", False)[i] for i in range(50)))
    assert ensemble(torch.stack(x)).shape == (50, 3)
    assert float((ensemble.predict(torch.stack(x)) == torch.tensor(labels)).float().mean()) > 0.7
    # The soup reads the streamed splits through their loaders: its recorded validation accuracy is the loaded soup's.
    soup = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.method == "soup")
    x_val, y_val = zip(*(task.get("Blobs")("val", False)[i] for i in range(400)))
    predicted = load_ensemble(result.path, name="soup", trust_task_code=True).predict(torch.stack(x_val))
    assert soup.val_accuracy == pytest.approx(float((predicted == torch.tensor(y_val)).float().mean()))


def test_token_ids_sweep_as_integers_and_the_loaded_ensemble_takes_them(ray_session, storage_dir):
    result = sweep("token_task.py", storage_dir, plan="2x1", ensemble=True)
    tables = load(result.path)
    assert result.counts == {"completed": 2}
    task = load_task(os.path.join(TASKS, "token_task.py"))
    _, _, (x_test, y_test) = task.get("load_data")()
    # The best checkpoint's recorded accuracy is the model's own on the raw token ids (nothing standardised them).
    best = result.best_trial_id
    ckpt = best_checkpoint(tables, best)
    model = SweepModels(Storage.from_uri(result.path), trust_task_code=True).model(CandidateKey(best, ckpt["epoch"]))
    _, (x_val, y_val), _ = task.get("load_data")()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean())
    assert ckpt["val_accuracy"] == pytest.approx(accuracy) and accuracy > 0.5
    dataset = read_dataset(Storage.from_uri(result.path))
    assert (dataset.input_dtype, dataset.mean) == ("int64", None)  # token ids: never standardised
    assert (dataset.objective, dataset.mode) == ("val_accuracy", "max")
    ensemble = load_ensemble(result.path, trust_task_code=True)
    assert float((ensemble.predict(torch.from_numpy(x_test)).numpy() == y_test).mean()) > 0.5
    with pytest.raises(ConfigError, match="inputs are float32 but the sweep's models trained on int64 inputs"):
        ensemble(torch.from_numpy(x_test).float())  # never cast: a float token id is a mistake worth naming
    # a word beyond the vocabulary the models were built for: named, not torch's "index out of range in self" alone
    unseen = torch.from_numpy(x_test).clone()
    unseen[3, 2] = 31
    with pytest.raises(ConfigError, match=r"inputs hold ids from 0 to 31, and the models raised RuntimeError: .*their "
                                          r"embeddings take ids 0 to num_embeddings - 1 \(num_embeddings 30\)"):
        ensemble.predict(unseen)


def test_a_custom_kind_sweeps_answer_is_its_best_checkpoint_loaded_with_the_workers_standardisation(storage_dir):
    result = sweep("custom_kind_task.py", storage_dir, ensemble=True, executor="processes")
    storage = Storage.from_uri(result.path)
    stored = max((r for r in load(result.path).checkpoints.to_pylist() if math.isfinite(r["score"])),
                 key=lambda r: r["score"])
    model = load_ensemble(result.path, name="best", task=os.path.join(TASKS, "custom_kind_task.py"))
    assert model.record is None and len(model.members) == 1
    _, (x_val, y_val), _ = load_task(os.path.join(TASKS, "custom_kind_task.py")).get("load_data")()
    with torch.no_grad():  # raw inputs in: the outputs as the model gives them, on the table's numbers
        l1 = float((model(torch.from_numpy(x_val)) - torch.from_numpy(y_val)).abs().mean())
    assert l1 == pytest.approx(metric_map(stored)["val_l1"], rel=1e-5)
    assert model.predict(x_val).shape == (60, 2)
    with pytest.raises(ConfigError, match='a kind = "custom" sweep has no ensembles; name="best" loads its best'):
        load_ensemble(result.path, name="top_k", task=os.path.join(TASKS, "custom_kind_task.py"))
    refused = CliRunner().invoke(app, ["ensemble", result.path])
    assert refused.exit_code != 0 and 'a kind = "custom" sweep has no ensembles' in str(refused.exception)
    assert "soup" not in refused.output  # refused before any word about what it would leave out
    assert read_dataset(storage).kind == "custom" and not storage.exists(schema.ENSEMBLES_PATH)
    from orchestrator.app.answer import ensemble_lines

    said, load_it = ensemble_lines(result.path, "task.py")  # what `caviar run` prints at the end
    assert said.startswith(f"Best checkpoint: trial {stored['trial_id']} epoch {stored['epoch']}")
    assert f"val_l1 {metric_map(stored)['val_l1']:.4f}" in said and load_it.startswith("Load it: ")


def test_a_sweep_ranked_by_its_own_auc_never_prunes_a_trial_as_not_learning_by_its_accuracy(tmp_path):
    """Accuracy under 1/C says nothing of a sweep ranked by the task's ROC AUC (a class-weighted loss on one positive
    in ten calls most examples positive at first): no trial whose AUC is far above chance is pruned as not learning."""
    result = run_sweep(os.path.join(TASKS, "imbalanced_auc_task.py"), storage=str(tmp_path), name="auc", stages=1,
                       pruner="asha", slots=1, seed=0, executor="processes")
    tables = load(result.path)
    first = [r for r in tables.metrics.to_pylist() if r["epoch"] == 1]
    assert first and all(r["val_accuracy"] < 0.5 < metric_map(r)["val_auc"] - 0.2 for r in first)  # the premise
    assert [t["status"] for t in tables.trials.to_pylist()] == ["completed", "completed"]
    # caviar ls shows the chosen ensemble's test AUC, the number the sweep is about, not its test accuracy (0.9 for
    # calling every example negative)
    chosen = next(r for r in read_ensembles(Storage.from_uri(result.path)) if r.chosen)
    listed = CliRunner().invoke(app, ["ls", str(tmp_path)], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and f"(test_auc {chosen.detail['test_objective']:.4f})" in listed.output


def test_a_sweep_ranked_by_its_own_class_weighted_loss_never_prunes_a_trial_as_not_learning_by_its_accuracy(tmp_path):
    """The chance value of a task's own loss is unknown to caviar, and its accuracy says nothing of it: a weighted loss
    that falls every epoch while accuracy sits at 0.1 was pruned as not learning at the first rung, every trial."""
    result = run_sweep(os.path.join(TASKS, "weighted_loss_task.py"), storage=str(tmp_path), name="weighted", stages=1,
                       pruner="asha", slots=1, seed=0, executor="processes", ensemble=False)
    tables = load(result.path)
    rows = tables.metrics.to_pylist()
    assert all(r["val_accuracy"] < 0.5 for r in rows if r["epoch"] == 1)  # the premise: under chance by accuracy
    trials = tables.trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"] and all(t["epochs_run"] == 3 for t in trials)
    for t in trials:  # and learning by the loss it is ranked by
        losses = [r["val_loss"] for r in sorted(rows, key=lambda r: r["epoch"]) if r["trial_id"] == t["trial_id"]]
        assert losses[-1] < losses[0]


def test_a_class_weighted_loss_ranked_by_accuracy_is_not_told_that_nothing_learned(tmp_path):
    """A class-weighted loss_fn on one example in nine of class 1, ranked by the default val accuracy: every trial's
    accuracy stays under the majority share (0.887) while its weighted loss falls far under any constant answer's
    (0.69). The sweep ended saying no trial did better than predicting class 0 and to check the learning rate and the
    data; now it says the task's own loss may not aim at accuracy and how to rank by it."""
    result = run_sweep(os.path.join(TASKS, "class_weighted_accuracy_task.py"), storage=str(tmp_path), name="weighted",
                       slots=1, seed=0, executor="processes", ensemble=False, pruner="none")
    assert min(r["val_loss"] for r in load(result.path).metrics.to_pylist()) < 0.62  # learned, by its own loss
    said = [w for w in result.warnings if "always predicting class 0" in w]
    assert len(said) == 1 and said[0].startswith("no trial's val accuracy did clearly better than always predicting "
                                                 "class 0 (the most frequent: 0.887 of 300 val examples; best ")
    assert said[0].endswith('which the task\'s own loss_fn may not aim at (a class-weighted loss gives accuracy up for '
                            'the rarer classes): to rank trials by that loss, set objective = "val_loss" (mode = '
                            '"min") or a metric of your own, such as balanced accuracy; else check the ranges (the '
                            'learning rate first) and the data')


def test_a_method_a_regression_never_builds_is_refused_and_its_table_kept(storage_dir):
    # `caviar ensemble REG -m soup --trust-task-code` built no soup, said nothing, and rewrote the table with only
    # `single`: the greedy row load_ensemble(name="best") had returned was gone
    result = sweep("regression_task.py", storage_dir, plan="4x2", ensemble=True, executor="processes")
    storage = Storage.from_uri(result.path)
    before = read_ensembles(storage)
    for methods in (["-m", "soup", "--trust-task-code"], ["-m", "greedy,checkpoints"]):
        refused = CliRunner().invoke(app, ["ensemble", result.path, *methods])
        assert refused.exit_code == 2
        assert "option 'method'" in refused.output and "a regression sweep builds" in refused.output
        assert read_ensembles(storage) == before
    # every method by default: no word about a soup regression never builds
    default = CliRunner().invoke(app, ["ensemble", result.path])
    assert default.exit_code == 0 and "soup" not in default.output


def test_a_sweep_without_predictions_still_names_its_objective(storage_dir):
    # prediction_dtype = "none" wrote no dataset table, so top, status, ls and the report lost the objective:
    # `caviar top` showed "best score -0.2" for a Brier score minimised at 0.2
    result = sweep("custom_metric_task.py", storage_dir, plan="3x1", ensemble=True, executor="processes",
                   prediction_dtype="none")
    top = CliRunner().invoke(app, ["top", result.path], env={"COLUMNS": "250"})
    assert top.exit_code == 0 and "best val_brier" in top.output
    assert f"{-result.best_score:.4f}" in top.output and f"{result.best_score:.4f}" not in top.output
    rebuilt = CliRunner().invoke(app, ["ensemble", result.path])
    assert rebuilt.exit_code == 2 and 'prediction_dtype = "none"' in rebuilt.output and "soup" not in rebuilt.output
    model = load_ensemble(result.path, trust_task_code=True)  # the answer: its best checkpoint (no ensembles)
    assert model.record is None and len(model.members) == 1
    with pytest.raises(Exception, match='ran with prediction_dtype = "none"'):
        load_ensemble(result.path, name="top_k", trust_task_code=True)


def test_a_running_sweep_whose_trials_wrote_no_dataset_row_yet_names_its_objective(storage_dir):
    """The dataset row comes with a trial's first stored checkpoint (every checkpoint_seconds, or its end): until
    then `caviar status` said 'best: trial 1 (stage 1) score -0.0122' and `caviar top` and `caviar ls` showed the
    negated score of a calibration error minimised at 0.0122. The master records the objective in the sweep row
    before any trial; the sweep's folder without its dataset row stands for that moment."""
    import shutil

    result = sweep("custom_metric_task.py", storage_dir, plan="3x1", ensemble=False, executor="processes")
    shutil.rmtree(os.path.join(result.path, "dataset"))
    shown = f"{-result.best_score:.4f}"
    top = CliRunner().invoke(app, ["top", result.path], env={"COLUMNS": "250"})
    assert top.exit_code == 0 and "best val_brier" in top.output and shown in top.output
    assert f"{result.best_score:.4f}" not in top.output
    status = CliRunner().invoke(app, ["status", result.path], env={"COLUMNS": "250"})
    assert f") val_brier {shown}:" in status.output
    listed = CliRunner().invoke(app, ["ls", storage_dir], env={"COLUMNS": "250"})
    assert f"{shown} (val_brier)" in listed.output


def test_float64_regression_outputs_are_stored_and_ensembled_without_rounding_to_float32(tmp_path):
    """Targets near 1e7 with detail below float32's spacing there (a float64 model): every stored prediction read
    back as exactly 1e7, so the ensemble table gave the best single model a val MSE of 0.091 beside its trial's own
    0.034, and ensembles were chosen on the rounded numbers."""
    import pyarrow as pa

    result = sweep("float64_regression_task.py", str(tmp_path), plan="2x2", ensemble=True)
    storage = Storage.from_uri(result.path)
    stored = storage.read_table("predictions/trial-000000.parquet")
    assert stored.schema.field("values").type.value_type == pa.float64()
    best = min(t["best_val_loss"] for t in load(result.path).trials.to_pylist())
    single = next(r for r in read_ensembles(storage) if r.method == "single")
    assert single.val_mse == pytest.approx(best, rel=1e-9)


def test_a_loaded_regression_ensemble_predicts_the_average_its_row_scored(tmp_path):
    """Three members at weight 1/3 each, float64 outputs near 1e7 (no standardize_targets): the loaded module
    weighted them in float32 (1/3 is 0.33333334, the three sum to 1 + 1e-7), so its predictions were off by about 1
    in 1e7 of the outputs, far beyond the detail the models learned, while its row scored the exact average."""
    import pyarrow.compute as pc

    result = sweep("float64_offset_regression_task.py", str(tmp_path), plan="3x2", ensemble=True)
    storage = Storage.from_uri(result.path)
    top_k = next(r for r in read_ensembles(storage) if r.method == "top_k")
    assert len(top_k.members) == 3 and all(m.weight == pytest.approx(1 / 3) for m in top_k.members)
    stored = []
    for member in top_k.members:
        table = storage.read_table(f"predictions/trial-{member.key.trial_id:06d}.parquet")
        table = table.filter(pc.and_(pc.equal(table["epoch"], member.key.epoch), pc.equal(table["split"], "val")))
        table = table.sort_by("row")
        stored.append(np.array(table["values"].to_pylist(), dtype=np.float64))
    average = sum(values * m.weight for values, m in zip(stored, top_k.members))
    task_file = os.path.join(TASKS, "float64_offset_regression_task.py")
    _, (x_val, y_val), _ = load_task(task_file).get("load_data")()
    predicted = load_ensemble(result.path, name=top_k.ensemble_id, task=task_file).predict(x_val).numpy()
    assert np.abs(predicted - average).max() < 1e-6
    assert float(np.mean((predicted - y_val) ** 2)) == pytest.approx(top_k.val_mse, rel=1e-6)


def test_a_regression_in_huge_units_reports_its_mse_as_val_loss_and_no_trial_diverges(storage_dir):
    """Targets near 1e20, trained standardised: the default loss was evaluated in float32, whose sum of squared errors
    overflowed to inf, so both healthy trials were pruned as diverged; smaller sweeps showed a val loss 1338 off the
    same checkpoint's val MSE (1.7e10, float32 rounding). The default MSE is now evaluated in float64, as val_mse."""
    result = sweep("huge_units_regression_task.py", storage_dir, plan="2x2", executor="processes")
    tables = load(result.path)
    assert result.counts == {"completed": 2}, [t["reason"] for t in tables.trials.to_pylist()]
    for row in tables.metrics.to_pylist():
        assert math.isfinite(row["val_loss"]) and math.isfinite(row["train_loss_original"])
        assert row["val_loss"] == pytest.approx(metric_map(row)["val_mse"], rel=1e-12)


def test_a_regression_in_huge_units_shows_its_numbers_in_significant_digits(storage_dir):
    # An MSE near 1e37 printed with four decimals: 40 digits in caviar top, status and the answer.
    import re

    from orchestrator.app.answer import ensemble_lines

    result = sweep("huge_units_regression_task.py", storage_dir, plan="2x2", ensemble=True, executor="processes")
    best = -load(result.path).top(1).to_pylist()[0]["best_score"]
    assert best > 1e30
    outputs = ["\n".join(ensemble_lines(result.path))]
    for command in (["top", result.path], ["status", result.path], ["ls", storage_dir]):
        out = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
        assert out.exit_code == 0, out.output
        outputs.append(out.output)
    for shown in outputs:
        assert not re.search(r"[0-9]{12}", shown), shown
    assert f"{best:.6g}" in outputs[1]


@pytest.mark.parametrize(("task_file", "options", "said"), [
    ("soft_label_task.py", ["-m", "ema"], "ema: no trial stored EMA weights"),
    ("soft_label_task.py", ["-m", "single_ema"], "single_ema: no trial stored EMA weights"),
    ("soft_label_task.py", ["-m", "seeds"], "seeds: no config was trained from two or more seeds"),
    ("soft_label_task.py", ["-m", "soup,ema", "--trust-task-code"], "ema: no trial stored EMA weights"),
    ("regression_task.py", ["-m", "seeds"], "seeds: no config was trained from two or more seeds"),
])
def test_a_named_method_the_stored_predictions_cannot_build_is_refused_and_its_table_kept(
        storage_dir, task_file, options, said, monkeypatch, capsys):
    # `caviar ensemble SWEEP -m ema` on a sweep without EMA weights (or -m seeds without --seed-copies) built nothing
    # of it, said nothing, and rewrote the table with only `single`: the greedy row it had chosen was gone
    result = sweep(task_file, storage_dir, plan="3x2", ensemble=True, executor="processes", slots=1)
    storage = Storage.from_uri(result.path)
    before = read_ensembles(storage)
    soups = [r.weights_path for r in before if r.method == "soup"]
    soup_file = os.path.join(result.path, soups[0]) if soups else None
    soup_written = os.stat(soup_file).st_mtime_ns if soup_file else None
    monkeypatch.setattr("sys.argv", ["caviar", "ensemble", result.path, *options])
    with pytest.raises(SystemExit) as refused:
        main()  # the entry point: one line on stderr and exit 2, as every error caviar knows about
    assert refused.value.code == 2
    assert f"caviar: error: option 'method': {said}" in capsys.readouterr().err
    assert read_ensembles(storage) == before
    if soup_written is not None:  # refused before a soup was built: its weights file is the one the row describes
        assert os.stat(soup_file).st_mtime_ns == soup_written
        load_ensemble(result.path, name="soup", trust_task_code=True)


def test_a_model_raising_on_test_inputs_at_a_trials_end_fails_it_as_an_error_not_storage(storage_dir):
    # Each trial ran its epochs, then raised while its kept checkpoints were run on test: it was `failed (storage)`,
    # sending the user to look at their disk for their model's ValueError.
    result = sweep("failing_test_split_task.py", storage_dir, plan="2x1", executor="processes")
    trials = load(result.path).to_pandas("trials")
    assert set(trials["status"]) == {"failed"} and set(trials["reason"]) == {"error"}
    assert all("an input the model cannot take" in e for e in trials["error"])

"""A multi-label sweep on a real local Ray: tables, ensembles and the loaded answer recomputed per label.

Each (example, label) pair is one binary example to the predictions and the ensembles, so the
ensembles table's accuracy and log loss must equal the Hamming accuracy and the mean binary
cross-entropy of the loaded ensemble's per-label probabilities; a task metric written for the
model's (N, L) logits must choose the ensembles with the averaged logits.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.app.api import load, run_sweep
from orchestrator.ensemble.ensemble_run import read_dataset, read_ensembles
from orchestrator.spec.task import load_task
from orchestrator.store.storage import Storage
from tests.conftest import ROOT, best_raw_checkpoint_logits
from worker.load.ensemble_model import load_ensemble

MULTILABEL_TASK = os.path.join(ROOT, "tests", "tasks", "multilabel_task.py")
MEAN_LABEL_F1 = '''
objective = "val_label_f1"
mode = "max"


def metrics(outputs, targets):
    predicted = outputs > 0
    on = targets == 1
    tp = (predicted & on).sum(0).double()
    f1 = 2 * tp / (predicted.sum(0) + on.sum(0)).double().clamp_min(1)
    return {"label_f1": float(f1.mean())}
'''


def test_a_multilabel_sweep_records_per_label_cross_entropy_and_loads_per_label_probabilities(
        ray_session, storage_dir):
    result = run_sweep(MULTILABEL_TASK, storage=storage_dir, name="ml", plan="4x3", slots=2, seed=2,
                       pruner="none", ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    storage = Storage.from_uri(result.path)
    assert read_dataset(storage).multilabel
    tables = load(result.path)
    task = load_task(MULTILABEL_TASK)
    _, (x_val, y_val), (x_test, y_test) = task.get("load_data")()
    ckpt, z = best_raw_checkpoint_logits(result.path, MULTILABEL_TASK, result.best_trial_id)
    assert ckpt["val_loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(z, torch.from_numpy(y_val)
                                                                                        .float())), rel=1e-4)
    assert result.best_score == pytest.approx(-min(r["val_loss"] for r in tables.checkpoints.to_pylist()))
    rows = read_ensembles(storage)
    assert {r.method for r in rows} >= {"single", "top_k", "greedy"}
    ensemble = load_ensemble(result.path, trust_task_code=True)
    for record in rows:
        if record.method == "soup" and not record.chosen:
            continue
        loaded = load_ensemble(result.path, name=record.name, trust_task_code=True)
        p = loaded(torch.from_numpy(x_test)).double()
        assert p.shape == y_test.shape and bool(((p >= 0) & (p <= 1)).all())
        hamming = float((loaded.predict(torch.from_numpy(x_test)).numpy() == y_test).mean())
        assert record.test_accuracy == pytest.approx(hamming), record.name
        bce = float(F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), torch.from_numpy(y_test).double()))
        assert record.test_log_loss == pytest.approx(bce, rel=1e-3), record.name
    assert ensemble.record.chosen


def test_a_metric_written_for_per_label_logits_chooses_the_ensembles(ray_session, storage_dir, tmp_path):
    task_file = tmp_path / "multilabel_f1_task.py"
    task_file.write_text(open(MULTILABEL_TASK).read() + MEAN_LABEL_F1)
    result = run_sweep(str(task_file), storage=storage_dir, name="f1", plan="4x3", slots=2, seed=2,
                       pruner="none", ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    rows = read_ensembles(Storage.from_uri(result.path))
    assert rows and all(r.detail["chosen_by"] == "val_label_f1" for r in rows)
    chosen = next(r for r in rows if r.chosen)
    task = load_task(str(task_file))
    _, (x_val, y_val), _ = task.get("load_data")()
    with torch.no_grad():
        p = load_ensemble(result.path, trust_task_code=True)(torch.from_numpy(x_val)).double()
    logits = torch.log(p) - torch.log1p(-p)  # the averaged probabilities as the model's per-label logits
    expected = task.get("metrics")(logits, torch.from_numpy(y_val))["label_f1"]
    assert chosen.detail["val_objective"] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(chosen.detail["test_objective"])


def test_caviar_ensemble_without_task_code_still_chooses_by_the_sweeps_exact_match(storage_dir, tmp_path):
    from typer.testing import CliRunner

    from orchestrator.app.cli import app

    task_file = tmp_path / "multilabel_exact_task.py"
    task_file.write_text(open(MULTILABEL_TASK).read() + 'objective = "val_exact_match"\n')
    result = run_sweep(str(task_file), storage=storage_dir, name="em", plan="4x2", slots=1, seed=2, pruner="none",
                       ensemble=True, executor="processes")
    built = {r.name: r for r in read_ensembles(Storage.from_uri(result.path))}
    assert all(r.detail["chosen_by"] == "val_exact_match" for r in built.values())
    # Exact match is caviar's own metric: a rebuild that may not run the task's code scores it all the same.
    cli = CliRunner().invoke(app, ["ensemble", result.path, "-m", "top_k,greedy,checkpoints"])
    assert cli.exit_code == 0, cli.output
    rows = read_ensembles(Storage.from_uri(result.path))
    assert all(r.detail["chosen_by"] == "val_exact_match" and "choice_note" not in r.detail for r in rows)
    for r in rows:
        assert r.detail["val_objective"] == pytest.approx(built[r.name].detail["val_objective"])

"""A one-logit binary classifier swept on a real local Ray, its answer loaded and every number recomputed.

The head is ``nn.Linear(h, 1)`` with caviar's default loss: the tables must hold binary cross-entropy
with logits, the loaded ensemble the two class probabilities, and a task metric written for the
model's ``(N, 1)`` logit must score the ensembles with that logit (``tests/worker/test_binary_head.py``
holds the pieces to torch's own formulas).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.app.api import run_sweep
from orchestrator.ensemble.ensemble_run import read_dataset, read_ensembles
from orchestrator.spec.task import load_task
from orchestrator.store.storage import Storage
from tests.conftest import ROOT, best_raw_checkpoint_logits
from worker.load.ensemble_model import load_ensemble

BINARY_TASK = os.path.join(ROOT, "tests", "tasks", "binary_head_task.py")
BRIER_FOR_THE_LOGIT = '''
objective = "val_brier"
mode = "min"


def metrics(outputs, targets):
    p1 = torch.sigmoid(outputs.float().squeeze(1))
    return {"brier": float(((p1 - targets.float()) ** 2).mean())}
'''


def test_a_one_logit_binary_sweep_records_binary_cross_entropy_and_loads_two_class_probabilities(
        ray_session, storage_dir):
    result = run_sweep(BINARY_TASK, storage=storage_dir, name="binary", plan="4x2", slots=2, seed=4,
                       pruner="none", ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    storage = Storage.from_uri(result.path)
    assert read_dataset(storage).output_shape == (1,)
    task = load_task(BINARY_TASK)
    _, (x_val, y_val), (x_test, y_test) = task.get("load_data")()
    ckpt, logits = best_raw_checkpoint_logits(result.path, BINARY_TASK, result.best_trial_id)
    z = logits.squeeze(1)
    assert ckpt["val_loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(z, torch.from_numpy(y_val)
                                                                                        .float())), rel=1e-4)
    assert ckpt["val_accuracy"] == pytest.approx(float(((z > 0).numpy() == y_val).mean()))
    chosen = next(r for r in read_ensembles(storage) if r.chosen)
    ensemble = load_ensemble(result.path, trust_task_code=True)
    probs = ensemble(torch.from_numpy(x_test))
    assert probs.shape == (len(x_test), 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(x_test)), atol=1e-5)
    assert chosen.test_accuracy == pytest.approx(float((ensemble.predict(torch.from_numpy(x_test)).numpy()
                                                        == y_test).mean()))
    assert chosen.test_accuracy > 0.7


def test_a_metric_written_for_the_logit_chooses_the_ensembles_with_the_averaged_logit(ray_session, storage_dir,
                                                                                         tmp_path):
    task_file = tmp_path / "binary_brier_task.py"
    task_file.write_text(open(BINARY_TASK).read().replace("import numpy as np\n", "import numpy as np\nimport torch\n")
                         + BRIER_FOR_THE_LOGIT)
    result = run_sweep(str(task_file), storage=storage_dir, name="brier", plan="4x2", slots=2, seed=4,
                       pruner="none", ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    rows = read_ensembles(Storage.from_uri(result.path))
    assert rows and all(r.detail["chosen_by"] == "val_brier" for r in rows)
    chosen = next(r for r in rows if r.chosen)
    task = load_task(str(task_file))
    _, (x_val, y_val), _ = task.get("load_data")()
    with torch.no_grad():
        p1 = load_ensemble(result.path, trust_task_code=True)(torch.from_numpy(x_val))[:, 1].double().numpy()
    # The Brier score of the loaded ensemble's P(class 1): what the metric computed from the averaged logit.
    assert chosen.detail["val_objective"] == pytest.approx(float(np.mean((p1 - y_val) ** 2)), rel=1e-4)

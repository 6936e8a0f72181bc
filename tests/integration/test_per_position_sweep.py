"""A class per position (tagging, segmentation) through whole sweeps: tables, ensembles and loaded answers recomputed.

Each labelled (example, position) pair is one classification row to the predictions and the ensembles, so the
ensembles table's accuracy and log loss must equal those of the loaded ensemble over the labelled positions; a
segmentation metric written for (N, C, H, W) scores (mean IoU) must choose the ensembles with the averaged
probabilities in that layout.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from orchestrator.app.api import run_sweep
from orchestrator.ensemble.ensemble_run import read_dataset, read_ensembles
from orchestrator.spec.task import load_task
from orchestrator.store.storage import Storage
from tests.conftest import EXAMPLES, ROOT, best_raw_checkpoint_logits
from worker.load.ensemble_model import load_ensemble

TAGGING_TASK = os.path.join(ROOT, "tests", "tasks", "tagging_task.py")
SEGMENTATION_EXAMPLE = os.path.join(EXAMPLES, "digits_segmentation.py")


def test_a_tagging_sweep_scores_labelled_tokens_only_and_loads_a_tag_per_token(ray_session, storage_dir):
    result = run_sweep(TAGGING_TASK, storage=storage_dir, name="tags", plan="4x3", slots=2, seed=1, pruner="none",
                       ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    storage = Storage.from_uri(result.path)
    assert read_dataset(storage).per_position
    _, (x_val, y_val), (x_test, y_test) = load_task(TAGGING_TASK).get("load_data")()
    ckpt, scores = best_raw_checkpoint_logits(result.path, TAGGING_TASK, result.best_trial_id, standardise=False)
    assert scores.shape == (*y_val.shape, 3)  # the model's (N, T, C): integer token ids are never standardised
    expected = F.cross_entropy(scores.transpose(1, 2), torch.from_numpy(y_val), ignore_index=-100)
    assert ckpt["val_loss"] == pytest.approx(float(expected), rel=1e-5)
    rows = read_ensembles(storage)
    assert {r.method for r in rows} >= {"single", "top_k", "greedy"}
    labelled = y_test != -100
    for record in rows:
        loaded = load_ensemble(result.path, name=record.name, trust_task_code=True)
        p = loaded(torch.from_numpy(x_test)).double()
        assert p.shape == (*y_test.shape, 3)  # probabilities per token, in the members' layout
        tags = loaded.predict(torch.from_numpy(x_test)).numpy()
        assert tags.shape == y_test.shape
        assert record.test_accuracy == pytest.approx(float((tags == y_test)[labelled].mean())), record.name
        true = p[torch.from_numpy(labelled)].gather(1, torch.from_numpy(y_test[labelled])[:, None])
        assert record.test_log_loss == pytest.approx(float(-true.clamp_min(1e-7).log().mean()), rel=1e-4)


def test_a_segmentation_metric_on_class_maps_chooses_the_ensembles(ray_session, storage_dir):
    result = run_sweep(SEGMENTATION_EXAMPLE, storage=storage_dir, name="seg", plan="4x2", slots=2, seed=0,
                       pruner="none", ensemble=True, prediction_dtype="float32")
    assert result.counts.get("failed", 0) == 0
    rows = read_ensembles(Storage.from_uri(result.path))
    assert rows and all(r.detail["chosen_by"] == "val_mean_iou" for r in rows)
    task = load_task(SEGMENTATION_EXAMPLE)
    data = task.get("load_data")()
    (x_val, y_val), (x_test, y_test) = data["val"], data["test"]
    for record in rows:
        loaded = load_ensemble(result.path, name=record.name, task=SEGMENTATION_EXAMPLE)
        with torch.no_grad():
            val, test = (loaded(torch.from_numpy(x)) for x in (x_val, x_test))
        assert val.shape == (len(x_val), 11, 8, 8)
        mean_iou = task.get("metrics")
        # the averaged probabilities as the model's scores (N, C, H, W): what the metric got when choosing
        assert record.detail["val_objective"] == pytest.approx(mean_iou(val.log(), torch.from_numpy(y_val))
                                                               ["mean_iou"], rel=1e-6), record.name
        assert record.detail["test_objective"] == pytest.approx(mean_iou(test.log(), torch.from_numpy(y_test))
                                                                ["mean_iou"], rel=1e-6), record.name
        keep = y_test != -100
        classes = loaded.predict(torch.from_numpy(x_test)).numpy()
        assert record.test_accuracy == pytest.approx(float((classes == y_test)[keep].mean())), record.name

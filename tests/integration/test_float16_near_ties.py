"""Stored float16 log-probabilities must pick the classes the model picked: the ensembles' accuracies are read from
them, and a 'single' row has to say what the checkpoints table and load_ensemble say."""

from __future__ import annotations

import numpy as np
import torch

from orchestrator import load, run_sweep
from orchestrator.ensemble.ensemble_run import read_ensembles
from orchestrator.store.storage import Storage
from tests.conftest import ROOT
from worker.train.predictions import changes_a_class

TASK = f"{ROOT}/tests/tasks/many_classes_near_ties_task.py"


def test_float16_that_would_tie_a_rows_best_class_is_stored_as_float32(tmp_path):
    """Before: 37 of 600 val rows of this 1000-class model read another class from the float16 file, and the
    ensembles table said val accuracy 0.1717 where the checkpoints table and load_ensemble said 0.1783."""
    result = run_sweep(TASK, storage=str(tmp_path), name="ties", seed=0, slots=1, prediction_dtype="float16")
    path = f"{tmp_path}/ties"
    best = load(path).checkpoints.to_pylist()
    best_row = max(best, key=lambda r: r["score"])
    single = next(r for r in read_ensembles(Storage.from_uri(path)) if r.method == "single")
    # Counted in examples (600 each): the checkpoints table holds float32 accuracies
    assert round(single.val_accuracy * 600) == round(best_row["val_accuracy"] * 600)
    assert round(single.test_accuracy * 600) == round(dict(best_row["metrics"])["test_accuracy"] * 600)
    assert result.counts == {"completed": 1}


def test_only_a_row_whose_best_class_float16_ties_away_counts():
    near = torch.full((2, 5), -1.6094)
    near[0, 3] += 1e-4  # 1e-4 above the rest: float16 (spacing 0.001 at 1.6) rounds it into a tie with class 0
    assert changes_a_class(near)
    clear = torch.log_softmax(torch.tensor(np.eye(5, dtype=np.float32) * 4), dim=1)
    assert not changes_a_class(clear)

"""Every bundled example sweeps: two one-epoch trials each, in child processes, so none rots unseen; its loaded
answer gives what the example's docstring says it gives."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from orchestrator import load_ensemble
from orchestrator.app.api import load, run_sweep
from orchestrator.spec.task import load_task
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.timeout(300)

# What each docstring promises the loaded ensemble returns for 4 test examples (and predict, where it says)
ANSWER_SHAPES = {
    "breast_cancer_binary.py": ((4, 2), (4,)),  # both class probabilities from a one-logit head
    "diabetes_regression.py": ((4,), None),  # the targets' own units and shape (N,), from a (N, 1) head
    "digits_attributes_multilabel.py": ((4, 3), (4, 3)),  # each label's probability; 0/1 labels
    "digits_cnn_augment.py": ((4, 10), (4,)),
    "digits_mlp.py": ((4, 10), (4,)),
    "digits_segmentation.py": ((4, 11, 8, 8), (4, 8, 8)),  # per-pixel probabilities; the class map
}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*.py"))), ids=os.path.basename)
def test_the_example_sweeps_and_its_answer_loads(path, tmp_path):
    result = run_sweep(path, trials=2, epochs=1, stages=1, slots=2, storage=str(tmp_path), name="example",
                       executor="processes")
    trials = load(result.path).trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 2, [t["error"] for t in trials]
    assert result.best_score is not None and result.ensemble is not None
    test = load_task(path).get("load_data")()["test"]
    x = np.stack([test[i][0] for i in range(4)]) if hasattr(test, "__getitem__") and not isinstance(test, tuple) \
        else test[0][:4]
    model = load_ensemble(result.path, name="best", task=path)
    outputs, (shape, labels) = model(x), ANSWER_SHAPES[os.path.basename(path)]
    assert tuple(outputs.shape) == shape
    if labels is not None:
        assert tuple(model.predict(x).shape) == labels

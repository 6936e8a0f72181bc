"""A loaded ensemble answers scikit-learn's ``predict_proba``, which users of its classifiers call first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.errors import ConfigError
from worker.load.ensemble_model import EnsembleModel


def test_predict_proba_gives_the_class_probabilities_in_eval_mode_and_refuses_a_regression_in_one_line():
    """It was torch's AttributeError ("'EnsembleModel' object has no attribute 'predict_proba'"), a traceback."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    members = [nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1)), nn.Linear(4, 1)]  # one logit each
    model = EnsembleModel(members, [0.7, 0.3], input_dtype=torch.float32, input_shape=(4,))
    expected = model(x).detach()
    model.train()  # a model holding it in training mode: dropout must not draw
    probs = model.predict_proba(x, batch_size=16)
    assert probs.shape == (50, 2) and not probs.requires_grad and model.training
    assert torch.allclose(probs, expected) and torch.allclose(probs.sum(1), torch.ones(50, dtype=probs.dtype))
    assert torch.equal(probs.argmax(1), model.predict(x))
    regression = EnsembleModel([nn.Linear(4, 1)], [1.0], input_dtype=torch.float32, input_shape=(4,),
                               target_shape=(1,))
    with pytest.raises(ConfigError, match=r"^predict_proba: this sweep's model predicts values, not class "
                                          r"probabilities: call predict\(x\)$"):
        regression.predict_proba(x)

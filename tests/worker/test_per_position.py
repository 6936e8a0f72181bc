"""A class per position (tagging, segmentation): targets (N, *S) with -100 where a position has no label.

Unit tests on plain tensors: what an ensemble's averaged probabilities look like when they reach a task's
own metrics and loss_fn, in the layout the model gives.
"""

from __future__ import annotations

import numpy as np
import torch

from orchestrator.ensemble.ensemble_run import Dataset
from worker.load.objective import _model_outputs


def _tokens(output_shape: tuple[int, ...]) -> tuple[Dataset, np.ndarray]:
    """Two sequences of three tokens, the last of the second padding; the labelled rows' probabilities."""
    every = np.array([1, 0, 1, 0, 1, -100])
    labelled = every[every != -100]
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.25, 0.75]])
    dataset = Dataset(2, labelled, labelled, (4,), None, None, output_shape=output_shape, target_shape=(3,),
                      y_val_all=every, y_test_all=every)
    return dataset, probs


def test_a_one_logit_token_head_gets_its_own_layout_back_from_an_ensemble():
    # nn.Linear(h, 1) on every token gives (n, T, 1): a metric written for it gets (n, T, 1), not two columns
    dataset, probs = _tokens((3, 1))
    logit = _model_outputs(dataset, probs, "val")
    assert logit.shape == (2, 3, 1)
    p1 = torch.sigmoid(logit.squeeze(-1)).reshape(-1)[torch.from_numpy(dataset.y_val_all != -100)]
    assert torch.allclose(p1.double(), torch.from_numpy(probs[:, 1]), atol=1e-6)


def test_a_one_logit_mask_head_and_two_score_heads_keep_their_layouts():
    for output_shape, shape in (((1, 3), (2, 1, 3)), ((2, 3), (2, 2, 3)), ((3, 2), (2, 3, 2))):
        dataset, probs = _tokens(output_shape)
        assert _model_outputs(dataset, probs, "val").shape == shape


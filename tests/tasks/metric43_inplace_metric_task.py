"""Three classes, and a metric of the task's own that scores "class 0 or not" by merging classes 1 and 2 on a numpy
view of the targets it is given: ``y[y > 0] = 1`` writes into the tensor it got (``Tensor.numpy()`` shares memory)."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


def metrics(outputs, targets):
    y = targets.cpu().numpy()
    y[y > 0] = 1  # "is it class 0?": in place, on caviar's own labels
    first = (outputs.argmax(dim=1) == 0).cpu().numpy()
    return {"class0_accuracy": float((first == (y == 0)).mean())}


def load_data():
    rng = np.random.default_rng(11)
    centers = np.array([[0, 0, 0], [3, 3, 0], [0, 3, 3]], dtype=np.float32)
    y = rng.integers(0, 3, size=300)
    x = (centers[y] + rng.normal(size=(300, 3))).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))

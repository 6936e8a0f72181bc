"""One positive in ten, ranked by the task's own ROC AUC, trained with a class-weighted loss.

The model starts biased towards the positive class, as a class-weighted loss pushes one: after the first epoch it calls
nearly every example positive (accuracy near 0.1, under chance for two classes) while its AUC is far above 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-4, 2e-4), "batch_size": 50, "optimizer": "sgd"}
settings = {"trials": 2, "epochs": 3}
objective = "val_auc"
mode = "max"


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y == 1], scores[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def metrics(outputs, targets):
    return {"auc": auc(outputs[:, 0].detach().double().cpu().numpy(), targets.cpu().numpy())}


def loss_fn(outputs, y):
    return F.binary_cross_entropy_with_logits(outputs[:, 0], y.to(outputs.dtype), pos_weight=torch.tensor(9.0))


def load_data():
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.1).astype(np.int64)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    x[:, 0] += 3.0 * y
    return (x[:300], y[:300]), (x[300:450], y[300:450]), (x[450:], y[450:])


def build_model(config):
    model = nn.Linear(4, 1)
    with torch.no_grad():  # ranks by the telling feature from the start, and calls nearly every example positive
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        model.bias.fill_(3.0)
    return model

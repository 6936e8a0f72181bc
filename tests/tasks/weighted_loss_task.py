"""One positive in ten, ranked by the task's own class-weighted loss (``objective = "val_loss"``).

As in imbalanced_auc_task, the model starts by calling nearly every example positive: accuracy near 0.1, under
chance for two classes, while the weighted loss it is ranked by falls epoch after epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from imbalanced_auc_task import build_model, load_data  # noqa: F401 (task pieces)

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 2e-2), "batch_size": 50, "optimizer": "sgd"}
settings = {"trials": 2, "epochs": 3}
objective = "val_loss"
mode = "min"


def loss_fn(outputs, y):
    return F.binary_cross_entropy_with_logits(outputs[:, 0], y.to(outputs.dtype), pos_weight=torch.tensor(9.0))

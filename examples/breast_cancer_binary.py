"""Binary classification with a one-logit head: scikit-learn's bundled breast cancer data (569 tumours, 30 features).

The model ends in ``nn.Linear(hidden, 1)``, as binary classifiers are usually written: caviar reads
its logit ``z`` as the class scores ``(0, z)``, so the default loss is exactly binary cross-entropy
with logits and ``P(malignant) = sigmoid(z)``. The sweep ranks trials by a metric of the task's own,
the ROC AUC (scikit-learn's), which the task computes from the model's ``(N, 1)`` logits; ensembles
are chosen by it too. Run it with ``caviar run examples/breast_cancer_binary.py``; the loaded
ensemble returns both class probabilities, shape ``(N, 2)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform

objective = "val_auc"
mode = "max"

space = {
    "lr": loguniform(1e-4, 1e-1),
    "optimizer": choice(["adam", "adamw", "momentum"]),
    "weight_decay": loguniform(1e-6, 1e-2),
    "hidden": lograndint(8, 128),
    "dropout": dropout(0.0, 0.5),
    "batch_size": lograndint(16, 64),
}

settings = {"trials": 24, "epochs": 20}


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """569 tumours split 60/20/20 with a fixed permutation; labels 1 = malignant, as int64 class indices."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), (1 - y[order]).astype(np.int64)  # sklearn's 1 is benign
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    width = int(config["hidden"])
    return nn.Sequential(nn.Linear(30, width), nn.ReLU(), nn.Dropout(float(config["dropout"])), nn.Linear(width, 1))


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """ROC AUC from the logits (a ranking: sigmoid would not change it), over the whole split."""
    from sklearn.metrics import roc_auc_score

    return {"auc": float(roc_auc_score(targets.cpu().numpy(), outputs.detach().float().cpu().numpy()[:, 0]))}

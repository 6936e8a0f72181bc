"""One target near 50, ranked by the task's own Pearson correlation, computed as often written: centring numpy views
of the outputs and targets it is given in place (``y -= y.mean()``), which writes through to the tensors."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metric43_correlation_task import build_model, load_data  # noqa: E402, F401  (the same data and model)

from orchestrator.search.space import loguniform  # noqa: E402

kind = "regression"
standardize_targets = True
objective = "val_corr"
mode = "max"

space = {"lr": loguniform(1e-2, 3e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


def metrics(outputs, targets):
    p = outputs.detach().cpu().numpy().reshape(-1)
    y = targets.cpu().numpy().reshape(-1)
    p -= p.mean()
    y -= y.mean()
    return {"corr": float((p * y).sum() / np.sqrt((p * p).sum() * (y * y).sum()))}
